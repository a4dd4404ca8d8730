"""llama.cpp's side of the GGUF interop tests: its own converter and its own runtime.

Why this exists: "GGUF as llama.cpp writes it" can only be tested against llama.cpp itself, not
against our reading of its format. The pinned llama-cpp-python sdist vendors the whole llama.cpp
tree: ``convert_hf_to_gguf.py`` (plus its ``conversion`` package and its own ``gguf-py``) writes the
backbone GGUFs our reader must accept, and the ``llama_cpp`` library it builds (the wheel the
README's test command installs) must load the GGUFs our writer produces.

Both run in subprocesses, never in the pytest process:

* the converter with ``PYTHONPATH`` on the vendored ``gguf-py``, which must not mix with the PyPI
  ``gguf`` (0.19) our package imports. Soprano's character-level BPE tokenizer has a pre-tokenizer
  hash the converter does not know ("BPE pre-tokenizer was not recognized"): a small driver
  (``_child_convert``) imports the converter module, overrides that detection in-process (the file
  itself is never edited) and calls its ``main()``;
* ``llama_cpp.Llama``, so a crash in the native library fails one test instead of killing pytest.

Where the sdist comes from: ``$SOPRANO_LLAMA_CPP_SDIST``, else the one ``.llama-cpp/`` (git-ignored)
holds; the README's test command downloads it there and builds the wheel from it with CMake flags
for a CPU-only, portable build (x86-64 AVX2 baseline, no -march=native, so a cached wheel runs on
any of our machines). pip's wheel cache keeps that wheel (keyed by the sdist's path, not by
CMAKE_ARGS): rerunning the command on the same machine reinstalls it without a rebuild. The README
names the requirement (``llama-cpp-python @ file://...``) because pip looks up a cached wheel only
for a named requirement: a bare path to the sdist is rebuilt every time.

API (all paths may be ``str`` or ``Path``)::

    missing() -> str | None            # why interop cannot run here, None when it can
    require()                          # pytest.fail(missing()) unless everything is in place
    converter_dir() -> Path            # the extracted converter (once per sdist)
    convert_hf_to_gguf(model_dir, out_path, outtype="f32") -> Path
    llama_cpp_logits(gguf_path, token_ids) -> np.ndarray [len(token_ids), n_vocab] float32
    llama_cpp_info(gguf_path) -> dict  # llama.cpp's read-back: n_vocab, n_embd, n_layer, metadata

``python tests/llama_cpp_support.py convert MODEL_DIR OUT.gguf [f32|f16|bf16|q8_0]`` converts
from the command line (the same entry point runs the subprocesses).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SDIST_DIR = REPO / ".llama-cpp"          # git-ignored; the README's test command downloads here
SDIST_ENV = "SOPRANO_LLAMA_CPP_SDIST"
SDIST_GLOB = "llama_cpp_python-*.tar.gz"
INSTALL_HINT = ("run the README's test command (it downloads the llama-cpp-python sdist into "
                ".llama-cpp/ and builds it), or set SOPRANO_LLAMA_CPP_SDIST to the sdist")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")

# The pre-tokenizer name written to ``tokenizer.ggml.pre``. llama.cpp refuses to load a "gpt2"
# (BPE) vocab whose pre-tokenizer name it does not know, and the converter only names the hashes
# it lists, so Soprano's tokenizer needs a name chosen here. "qwen2" is what the converter writes
# for every real Qwen2/Qwen3 checkpoint (the Qwen3 backbone's own family, so the file looks like
# any other qwen3 GGUF to llama.cpp), and like Soprano's pre-tokenizer its regex splits digits one
# by one. llama.cpp's text tokenizer still does not reproduce ours (it assumes a byte-level vocab;
# ours is character-level): tests feed llama.cpp token ids, never text.
PRE_TOKENIZER = "qwen2"

# Files of the vendored llama.cpp tree the converter needs (prefixes inside vendor/llama.cpp/).
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/",
                    "LICENSE")
_TIMEOUT = 900  # seconds; a real-shape f32 conversion takes ~10 s, a logits run ~5 s


# --- locating the sdist and the installed library ------------------------------------------------
def find_sdist() -> Path | None:
    """The llama-cpp-python sdist: ``$SOPRANO_LLAMA_CPP_SDIST``, else the newest in .llama-cpp/."""
    env = os.environ.get(SDIST_ENV)
    if env:
        return Path(env)
    found = sorted(SDIST_DIR.glob(SDIST_GLOB), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def sdist_version(sdist: Path) -> str:
    m = re.fullmatch(r"llama_cpp_python-(.+)\.tar\.gz", sdist.name)
    if not m:
        raise ValueError(f"{sdist}: not named llama_cpp_python-VERSION.tar.gz")
    return m.group(1)


def installed_version() -> str | None:
    """llama-cpp-python's installed version, read without loading its native library."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


def missing() -> str | None:
    """Why llama.cpp interop cannot run here (no sdist, no library, versions differ), else None."""
    sdist = find_sdist()
    if sdist is None:
        return f"no llama-cpp-python sdist in {SDIST_DIR} and ${SDIST_ENV} unset: {INSTALL_HINT}"
    if not sdist.is_file():
        return f"{sdist} (${SDIST_ENV}) is not a file: {INSTALL_HINT}"
    have = installed_version()
    if have is None:
        return f"llama-cpp-python is not installed: {INSTALL_HINT}"
    want = sdist_version(sdist)
    if have != want:
        # the converter and the library must be the same llama.cpp, or a failure means nothing
        return (f"llama-cpp-python {have} is installed but the sdist is {want} ({sdist}): "
                f"{INSTALL_HINT}")
    return None


def require() -> None:
    """Fail the calling test (as the suite does for chromium and nginx) unless interop can run."""
    why = missing()
    if why is not None:
        import pytest
        pytest.fail(why)


# --- the converter -------------------------------------------------------------------------------
def converter_dir() -> Path:
    """The sdist's ``vendor/llama.cpp`` converter files, extracted once (per sdist) into
    ``.llama-cpp/<sdist name>-converter/``; later calls and sessions reuse them."""
    sdist = find_sdist()
    if sdist is None or not sdist.is_file():
        raise FileNotFoundError(missing())
    stat = sdist.stat()
    dest = SDIST_DIR / f"{sdist.name.removesuffix('.tar.gz')}-{stat.st_size}-converter"
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    SDIST_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=SDIST_DIR))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                top, _, rest = m.name.partition("/")
                prefix = "vendor/llama.cpp/"
                if not rest.startswith(prefix) or not (m.isfile() or m.isdir()):
                    continue
                rel = rest[len(prefix):]
                if any(rel == f or (f.endswith("/") and rel.startswith(f))
                       for f in _CONVERTER_FILES):
                    m.name = rel
                    members.append(m)
            extract_kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **extract_kw)
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise RuntimeError(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        (tmp / ".complete").write_text(str(sdist) + "\n")
        try:
            tmp.rename(dest)
        except OSError:  # another process got there first (or a stale partial dir is in the way)
            if not marker.is_file():
                shutil.rmtree(dest, ignore_errors=True)
                tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _converter_env(conv: Path) -> dict:
    env = dict(os.environ)
    # the vendored gguf-py first, then the converter's own package; nothing else inherited, so
    # the PyPI gguf in site-packages can only come after them
    env["PYTHONPATH"] = os.pathsep.join([str(conv / "gguf-py"), str(conv)])
    env.pop("NO_LOCAL_GGUF", None)
    return env


def _run(cmd, env=None, timeout=_TIMEOUT, what="subprocess"):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed with exit status {proc.returncode}\n"
                           f"command: {' '.join(map(str, cmd))}\n"
                           f"--- stdout ---\n{proc.stdout[-5000:]}\n"
                           f"--- stderr ---\n{proc.stderr[-10000:]}")
    return proc


def convert_hf_to_gguf(model_dir, out_path, outtype: str = "f32",
                       timeout: float = _TIMEOUT) -> Path:
    """Convert ``model_dir`` (an HF-layout Soprano checkpoint) to a backbone GGUF with llama.cpp's
    own ``convert_hf_to_gguf.py`` (architecture qwen3). Only ``model.safetensors``, the config and
    the tokenizer files are read: ``decoder.pth`` is ignored. Returns ``out_path``."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} not in {OUTTYPES}")
    conv = converter_dir()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, str(Path(__file__).resolve()), "_convert", str(conv), str(model_dir),
          str(out_path), outtype], env=_converter_env(conv), timeout=timeout,
         what="llama.cpp's convert_hf_to_gguf.py")
    if not out_path.is_file():
        raise RuntimeError(f"the converter exited 0 but wrote no {out_path}")
    return out_path


def _child_convert(conv: str, model_dir: str, out_path: str, outtype: str) -> None:
    """Subprocess: import llama.cpp's converter, override its pre-tokenizer detection, run it."""
    sys.path[:0] = [os.path.join(conv, "gguf-py"), conv]
    import gguf  # noqa: F401  (the vendored one: PYTHONPATH and sys.path put it first)
    if not os.path.realpath(gguf.__file__).startswith(os.path.realpath(conv)):
        raise RuntimeError(f"imported {gguf.__file__}, not the vendored gguf-py in {conv}")
    import convert_hf_to_gguf as converter
    from conversion.base import TextModel, logger

    original = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        # Keep llama.cpp's answer for any tokenizer it knows; for Soprano's (unknown hash) return
        # PRE_TOKENIZER instead of raising "BPE pre-tokenizer was not recognized".
        level = logger.level
        logger.setLevel("ERROR")  # its 12-line "not recognized" banner, which we handle
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            from hashlib import sha256
            chktok = tokenizer.encode(_chktxt(original))
            chkhsh = sha256(str(chktok).encode()).hexdigest()
            logger.setLevel(level)
            logger.info(f"soprano: unknown BPE pre-tokenizer hash {chkhsh}; "
                        f"writing tokenizer.ggml.pre = {PRE_TOKENIZER!r}")
            return PRE_TOKENIZER
        finally:
            logger.setLevel(level)

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", out_path, "--outtype", outtype]
    converter.main()


def _chktxt(get_vocab_base_pre) -> str:
    """The probe text the converter hashes (read from its own source, to log the same hash)."""
    import inspect
    src = inspect.getsource(get_vocab_base_pre)
    m = re.search(r"chktxt = (.+)\n", src)
    import ast
    return ast.literal_eval(m.group(1)) if m else ""


# --- the llama.cpp runtime -----------------------------------------------------------------------
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def llama_cpp_logits(gguf_path, token_ids, n_threads: int | None = None,
                     timeout: float = _TIMEOUT) -> np.ndarray:
    """Logits llama.cpp (llama_cpp.Llama, CPU, fp32 KV cache, no flash attention) computes for
    every position of one batched pass over ``token_ids``: float32 ``[len(token_ids), n_vocab]``.
    Runs in a subprocess."""
    ids = [int(t) for t in token_ids]
    if not ids:
        raise ValueError("token_ids is empty")
    with tempfile.TemporaryDirectory(prefix="llama-cpp-logits-") as tmp:
        out = Path(tmp) / "logits.npy"
        _run([sys.executable, str(Path(__file__).resolve()), "_logits", str(gguf_path),
              json.dumps(ids), str(out), str(n_threads or _cores())],
             timeout=timeout, what="llama_cpp logits")
        return np.load(out)


def _load_llama(gguf_path: str, n_ctx: int, n_threads: int, logits_all: bool):
    import llama_cpp
    return llama_cpp.Llama(
        model_path=gguf_path, n_gpu_layers=0, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
        n_threads=n_threads, n_threads_batch=n_threads, logits_all=logits_all,
        flash_attn=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
        use_mmap=False,
        verbose=True)  # llama.cpp's log goes to the captured stderr, shown on failure


def _child_logits(gguf_path: str, ids_json: str, out: str, n_threads: str) -> None:
    ids = json.loads(ids_json)
    n_ctx = max(32, -(-len(ids) // 32) * 32)
    llm = _load_llama(gguf_path, n_ctx, int(n_threads), logits_all=True)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float32, copy=True)
    assert logits.shape == (len(ids), llm.n_vocab()), logits.shape
    np.save(out, logits)


def llama_cpp_info(gguf_path, timeout: float = _TIMEOUT) -> dict:
    """What llama.cpp reads back from a GGUF: ``n_vocab``, ``n_embd``, ``n_layer``,
    ``n_ctx_train``, ``n_params``, ``desc`` (its one-line model description) and ``metadata`` (every
    scalar key/value as llama.cpp's strings; arrays are left out by llama.cpp). Subprocess."""
    with tempfile.TemporaryDirectory(prefix="llama-cpp-info-") as tmp:
        out = Path(tmp) / "info.json"
        _run([sys.executable, str(Path(__file__).resolve()), "_info", str(gguf_path), str(out)],
             timeout=timeout, what="llama_cpp model info")
        return json.loads(out.read_text())


def _child_info(gguf_path: str, out: str) -> None:
    import ctypes

    import llama_cpp
    llm = _load_llama(gguf_path, 32, 1, logits_all=False)
    model = llm._model.model
    buf = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model, buf, len(buf))
    info = {"n_vocab": llm.n_vocab(), "n_embd": llm.n_embd(),
            "n_layer": llama_cpp.llama_model_n_layer(model),
            "n_ctx_train": llm._model.n_ctx_train(),
            "n_params": llama_cpp.llama_model_n_params(model),
            "desc": buf.value.decode("utf-8", "replace"), "metadata": dict(llm.metadata)}
    Path(out).write_text(json.dumps(info))


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"_convert": _child_convert, "_logits": _child_logits, "_info": _child_info}
    if argv and argv[0] in commands:
        commands[argv[0]](*argv[1:])
    elif argv and argv[0] == "convert" and len(argv) in (3, 4):
        print(convert_hf_to_gguf(*argv[1:]))
    else:
        raise SystemExit(__doc__.split("\n\n")[-1].strip())


if __name__ == "__main__":
    main()
