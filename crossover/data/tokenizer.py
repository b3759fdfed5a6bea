"""Tokenizers: a byte-level BPE trained on the training documents, or a pretrained one (local path or hub name).

Every tokenizer the platform uses has an end-of-document, a mask and a pad token. A trained BPE gets
`<|endoftext|>`, `<|mask|>` and `<|pad|>` as ids 0, 1, 2 (inside `bpe_vocab`). A pretrained tokenizer keeps the
special tokens it has (`<|endoftext|>`/`</s>`/`<eos>`, `<|mask|>`/`[MASK]`/`<mask>`, `<|padding|>`/`<pad>`/`[PAD]`)
and gets `<|mask|>` (and `<|endoftext|>`) appended when missing; with no pad token, pad is the end-of-document id
(packed windows never need padding). Its final size must equal the spec's `vocab_size`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossover.data.cache import content_key, file_sha256, remove_stale_tmp, tmp_path_for
from crossover.data.errors import DataError
from crossover.specs.expand import padded_vocab
from crossover.specs.study import TokenizerSpec

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOD, MASK, PAD = "<|endoftext|>", "<|mask|>", "<|pad|>"
EOD_NAMES = (EOD, "</s>", "<eos>", "<|eos|>", "[EOS]")
MASK_NAMES = (MASK, "[MASK]", "<mask>", "<|MASK|>")
PAD_NAMES = ("<|padding|>", PAD, "<pad>", "[PAD]")
TOKENIZER_VERSION = 1


@dataclass(frozen=True)
class SpecialIds:
    eod: int
    mask: int
    pad: int


def special_ids(tok: Tokenizer) -> SpecialIds:
    eod = _find(tok, EOD_NAMES)
    mask = _find(tok, MASK_NAMES)
    if eod is None or mask is None:
        raise DataError("tokenizer lacks an end-of-document or mask token")  # ensure_specials adds them
    pad = _find(tok, PAD_NAMES)
    return SpecialIds(eod=eod, mask=mask, pad=eod if pad is None else pad)


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of a text exactly as the store tokenizes documents: special-token text stays text."""
    tok.encode_special_tokens = True
    return tok.encode(text, add_special_tokens=False).ids


def decode_ids(tok: Tokenizer, ids: Any) -> str:
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _find(tok: Tokenizer, names: Iterable[str]) -> int | None:
    for name in names:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def real_size(tok: Tokenizer) -> int:
    """Rows an embedding needs: the largest id plus one (ids may be sparse)."""
    vocab = tok.get_vocab(with_added_tokens=True)
    return max(vocab.values()) + 1 if vocab else 0


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    """A byte-level BPE with `vocab_size` tokens at most, the three special tokens first (ids 0, 1, 2)."""
    # lazy: keeps tokenizers out of crossover validate
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD, MASK, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def load_pretrained(name: str) -> Tokenizer:
    """A tokenizer.json file, a directory holding one, or a Hugging Face hub name (downloaded once)."""
    from tokenizers import Tokenizer  # lazy: keeps tokenizers out of crossover validate

    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:
            raise DataError(f"cannot read tokenizer '{path}': {exc}") from None
    if name.startswith((".", "/", "~")) or name.endswith(".json"):
        raise DataError(
            f"pretrained tokenizer '{name}' does not exist; give a tokenizer.json, its directory, or a hub name"
        )
    try:
        return Tokenizer.from_pretrained(name)
    except Exception as exc:
        raise DataError(
            f"cannot load pretrained tokenizer '{name}' from the Hugging Face hub: {type(exc).__name__}: {exc}. "
            "Check the name and network access, or give a local path to its tokenizer.json"
        ) from None


def ensure_specials(tok: Tokenizer) -> list[str]:
    """Append the end-of-document and mask tokens when missing; return what was added."""
    from tokenizers import AddedToken  # lazy: keeps tokenizers out of crossover validate

    added = []
    for names, token in ((EOD_NAMES, EOD), (MASK_NAMES, MASK)):
        if _find(tok, names) is None:
            tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
            added.append(token)
    return added


def check_size(tok: Tokenizer, spec: TokenizerSpec) -> int:
    """The tokenizer's real size, after checking it fits the model's embedding (`padded_vocab(spec size)`)."""
    size = real_size(tok)
    rows = padded_vocab(spec.size)
    if spec.pretrained is not None and size != spec.vocab_size:
        raise DataError(
            f"pretrained tokenizer '{spec.pretrained}' has {size} tokens (mask token included) but the spec states "
            f"tokenizer.vocab_size: {spec.vocab_size}"
            + (f", so the model's {rows}-row embedding is too small" if size > rows else "")
            + f"; set data.tokenizer.vocab_size: {size}"
        )
    if size > rows:
        raise DataError(f"tokenizer has {size} tokens but the model's embedding has {rows} rows; raise the vocab size")
    return size


def tokenizer_key(spec: TokenizerSpec, corpus_key: str) -> str:
    """A pretrained tokenizer depends on its name (and file); a trained BPE on the corpus and held-out split too."""
    if spec.pretrained is not None:
        path = Path(spec.pretrained).expanduser()
        path = path / "tokenizer.json" if path.is_dir() else path
        identity = file_sha256(path) if path.is_file() else spec.pretrained
        return content_key("pretrained", TOKENIZER_VERSION, identity, spec.vocab_size)
    return content_key("bpe", TOKENIZER_VERSION, corpus_key, spec.bpe_vocab)


def get_tokenizer(
    spec: TokenizerSpec,
    cache: Path,
    corpus_key: str,
    training_texts: Callable[[], tuple[Iterable[str], int]],
    notify: Callable[[str], None],
) -> tuple[Tokenizer, str]:
    """The tokenizer from `cache/tokenizers/<key>.json`, else trained or loaded and cached atomically.

    `training_texts()` gives (texts, count) of the documents to train a BPE on; it is called only on a miss.
    Returns (tokenizer, key).
    """
    from tokenizers import Tokenizer  # lazy: keeps tokenizers out of crossover validate

    key = tokenizer_key(spec, corpus_key)
    path = cache / "tokenizers" / f"{key}.json"
    remove_stale_tmp(path.parent, path.name)
    if path.exists():
        try:
            tok = Tokenizer.from_file(str(path))
            special_ids(tok)
            check_size(tok, spec)
            return tok, key
        except DataError:
            raise
        except Exception as exc:
            notify(f"cached tokenizer {path} is unreadable ({type(exc).__name__}); rebuilding it")
            path.unlink(missing_ok=True)
    if spec.pretrained is not None:
        tok = load_pretrained(spec.pretrained)
        added = ensure_specials(tok)
        if added:
            notify(f"added {', '.join(added)} to pretrained tokenizer '{spec.pretrained}'")
    else:
        texts, count = training_texts()
        tok = train_bpe(texts, spec.bpe_vocab or 4096, count)
    special_ids(tok)
    check_size(tok, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    tok.save(str(tmp))
    tmp.replace(path)
    return tok, key
