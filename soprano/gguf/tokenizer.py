"""Soprano's tokenizer rebuilt from a GGUF file's ``tokenizer.ggml.*`` metadata.

A GGUF backbone carries the vocabulary (``tokens``, ``token_type``) and the BPE ``merges`` but
not ``tokenizer.json``'s normalizer and pre-tokenizer, which llama.cpp names by a
``tokenizer.ggml.pre`` string instead. Soprano has one tokenizer: a character-level BPE (no
byte-level mapping) whose normalizer lowercases and collapses whitespace runs, whose
pre-tokenizer splits digits one by one and then isolates ``\\s+|\\w+|[^\\w\\s]+``, and whose
control tokens (``[STOP]``, ``[TEXT]``, ``[START]``, the audio tokens ``[0]``..) are matched
whole. ``tokenizer_from_gguf`` rebuilds exactly that from the vocabulary, so a GGUF model
tokenizes identically to its ``tokenizer.json``. When the file also holds
``tokenizer.huggingface.json`` (our converter writes it), that is used as is.
"""
import json

from ..errors import ModelFileError

# What our converter writes as tokenizer.ggml.pre by default. llama.cpp refuses a file whose
# name it does not know, and only the Soprano pull request (#28607) knows its "soprano" (what that
# PR's converter writes); "default" loads in every llama.cpp, which uses the name only to
# tokenize text, as Soprano's runtime does itself. `convert --pre-tokenizer soprano` writes the
# PR's name.
GGUF_PRE = "default"
SPLIT_PATTERN = r"\s+|\w+|[^\w\s]+"
# gguf's TokenType values for tokens matched whole before BPE runs.
_CONTROL, _USER_DEFINED = 3, 4


def soprano_normalizer():
    from tokenizers import Regex, normalizers
    return normalizers.Sequence([normalizers.Lowercase(),
                                 normalizers.Replace(Regex(r"\s+"), " ")])


def soprano_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
    ])


def _split_merge(merge: str, vocab: dict) -> tuple[str, str] | None:
    """A merge line "a b" as its pair. Tokens may themselves hold spaces, so take the split
    whose halves and whose join are all in the vocabulary."""
    for i, ch in enumerate(merge):
        if ch == " ":
            left, right = merge[:i], merge[i + 1:]
            if left in vocab and right in vocab and left + right in vocab:
                return left, right
    return None


def tokenizer_from_gguf(gf):
    """The ``tokenizers.Tokenizer`` of GGUF file ``gf`` (a ``GGUFFile``)."""
    from tokenizers import AddedToken, Tokenizer, models
    if gf.has("tokenizer.huggingface.json"):
        try:
            return Tokenizer.from_str(gf.get("tokenizer.huggingface.json", str))
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            raise ModelFileError(gf.path, f"tokenizer.huggingface.json is not a readable "
                                          f"tokenizer ({e})") from e
    kind = gf.get("tokenizer.ggml.model", str)
    if kind != "gpt2":
        raise ModelFileError(gf.path, f"tokenizer.ggml.model is '{kind}', expected 'gpt2' "
                                      "(Soprano's BPE tokenizer)")
    tokens = gf.get("tokenizer.ggml.tokens", list)
    types = gf.get("tokenizer.ggml.token_type", list, default=[1] * len(tokens))
    if len(types) != len(tokens):
        raise ModelFileError(gf.path, f"tokenizer.ggml.token_type has {len(types)} entries "
                                      f"for {len(tokens)} tokens")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = []
    for line in gf.get("tokenizer.ggml.merges", list):
        pair = _split_merge(line, vocab)
        if pair is None:
            raise ModelFileError(gf.path, f"tokenizer.ggml.merges holds {line!r}, which is "
                                          "not a pair of tokens merging into a token")
        merges.append(pair)
    unk = gf.get("tokenizer.ggml.unknown_token_id", int, default=0)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk]))
    tok.normalizer = soprano_normalizer()
    tok.pre_tokenizer = soprano_pre_tokenizer()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types)
                            if kind in (_CONTROL, _USER_DEFINED)])
    return tok


def tokenizer_json(tokenizer) -> str:
    """``tokenizer.json``'s text, compact, for ``tokenizer.huggingface.json``."""
    return json.dumps(json.loads(tokenizer.to_str()), separators=(",", ":"), ensure_ascii=False)
