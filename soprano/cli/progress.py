"""What ``soprano-tts generate`` shows on stderr while it waits: the model's files and load time,
sentences done and tokens/s during synthesis, and the real-time factor at the end.

``Progress(enabled=False)`` prints nothing; every method is then a no-op, so the caller needs no
``if``. Lines go through ``tqdm.write`` so that they do not tear a bar being drawn; stdout is
never written. Importable without torch or numpy (the ``--synthetic`` path imports this).
"""
import os
import sys
import time

MODEL_RATE = 32000  # soprano.audio.SAMPLE_RATE: the model's samples per second


def human_size(n: int) -> str:
    """Decimal units, as ``ls -h --si`` and the hub show them: 151 MB, 2.1 MB, 340 kB, 12 B."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def model_files(model_dir, names) -> str:
    """``model.safetensors 151 MB, decoder.pth 48 MB, ...`` for the ``names`` present, sizes as
    stored (a hub snapshot's symlinks are followed to their blobs)."""
    parts = []
    for name in names:
        try:
            parts.append(f"{name} {human_size(os.stat(os.path.join(model_dir, name)).st_size)}")
        except OSError:
            continue  # the loader reports a missing file with its own error
    return ", ".join(parts)


class Progress:
    """Stage lines and a live sentence count for one ``generate`` run (see the module doc)."""

    def __init__(self, enabled: bool, sentences: bool = True, stream=None):
        """``sentences``: whether the synthesizer reports sentences (the ``--synthetic`` chirp
        does not, and is too quick to need it)."""
        self.enabled = enabled
        self.counts_sentences = sentences
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None            # the live bar the sentence counts go to (see ``sentences``)
        self.per_file = False      # whether ``bar`` counts files (counts go to its postfix)
        self.batch_start = 0.0
        self.synth_seconds = 0.0   # time inside synthesis calls, all batches
        self.gen_seconds = 0.0     # of which until the last sentence's tokens (then decoding)
        self.sentences_done = self.tokens = self.samples = 0

    def line(self, text: str):
        if self.enabled:
            from tqdm import tqdm
            tqdm.write(text, file=self.stream)
            self.stream.flush()

    def file_bar(self, n_files: int):
        """The bar over files for a run of several; sentence counts go to its postfix."""
        from tqdm import tqdm
        self.bar = tqdm(total=n_files, unit="file", file=self.stream,
                        disable=not self.enabled or n_files < 2, dynamic_ncols=True)
        self.per_file = not self.bar.disable
        return self.bar

    def batch(self, synth, texts, seed):
        """``synth(texts, seed, on_sentence)`` timed, its sentences counted and shown as they
        finish.
        For one file, a bar over its sentences is drawn for the batch's duration."""
        from tqdm import tqdm
        own = None
        if self.enabled and self.counts_sentences and not self.per_file:
            # the total is known at the first finished sentence: until then "0/?". Redrawn at
            # every sentence (a few per second at most), so that none is skipped.
            own = tqdm(total=None, desc="synthesizing", file=self.stream, mininterval=0,
                       miniters=1,
                       bar_format="{desc}: {n_fmt}/{total_fmt} sentences [{elapsed}{postfix}]")
        self.batch_start = time.perf_counter()

        def on_sentence(done: int, total: int, tokens: int):
            rate = tokens / max(time.perf_counter() - self.batch_start, 1e-9)
            if own is not None:
                own.total = total
                own.set_postfix_str(f"{rate:.0f} tokens/s", refresh=False)
                own.update(done - own.n)
            elif self.per_file:
                self.bar.set_postfix_str(f"sentences {done}/{total}, {rate:.0f} tokens/s")
            on_sentence.last = (done, tokens, time.perf_counter())
        on_sentence.last = (0, 0, self.batch_start)
        try:
            audios = synth(texts, seed, on_sentence if self.enabled else None)
        finally:
            if own is not None:
                own.close()
        self.synth_seconds += time.perf_counter() - self.batch_start
        done, tokens, last = on_sentence.last
        self.gen_seconds += last - self.batch_start
        self.sentences_done += done
        self.tokens += tokens
        self.samples += sum(len(a) for a in audios)
        return audios

    def summary(self):
        """The synthesis totals: sentences, tokens/s and the real-time factor (audio at the
        model's rate, before any resampling, over the time spent synthesizing)."""
        if not self.enabled or not self.sentences_done:
            return
        t = max(self.synth_seconds, 1e-9)
        audio = self.samples / MODEL_RATE
        n = self.sentences_done
        self.line(f"synthesized {n} sentence{'s' if n != 1 else ''}, {self.tokens} tokens at "
                  f"{self.tokens / max(self.gen_seconds, 1e-9):.0f} tokens/s; {audio:.2f} s of "
                  f"audio in {t:.2f} s: {audio / t:.2f}x real time")
