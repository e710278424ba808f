"""The progress bar of ``verbose=2`` (tqdm when installed)."""

import time


class EpochProgress:
    """One update per epoch: loss, validation score, samples/s and time left.

    Uses tqdm when it is installed, otherwise prints one line per epoch with
    the same fields.  An update costs microseconds against an epoch of many
    kernel calls, so the bar never shows in the fit time.
    """

    def __init__(self, total_epochs, n_samples, desc="fit"):
        self.total = total_epochs
        self.n_samples = n_samples
        self.start = time.perf_counter()
        self.done = 0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total_epochs, desc=desc, unit="epoch",
                            dynamic_ncols=True)

    def update(self, loss, score=None):
        self.done += 1
        elapsed = time.perf_counter() - self.start
        rate = self.done * self.n_samples / elapsed if elapsed > 0 else float("nan")
        fields = {"loss": f"{loss:.6g}"}
        if score is not None:
            fields["val"] = f"{score:.4f}"
        fields["samples/s"] = f"{rate:,.0f}"
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
            self.bar.update(1)
        else:
            left = elapsed / self.done * (self.total - self.done)
            text = ", ".join(f"{k} {v}" for k, v in fields.items())
            print(f"epoch {self.done}/{self.total}: {text}, about {left:.0f} s left "
                  "at most", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
