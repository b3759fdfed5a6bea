"""Quality scores and tiers: `low`, `medium` and `high` are the token-weighted terciles of a per-document score.

A score comes from a `QualityScorer` (the heuristic `CodeQualityScorer` or `ProseQualityScorer`) or from a score
column already in the dataset. `DataSpec.quality_scorer` picks one:

- `code` / `prose`: that heuristic scorer;
- `auto`: a `quality_score` column when the dataset has one, else `code` when the corpus looks like source code
  (the stdlib-python and python-packages corpora do), else `prose`;
- any other name: the dataset column of that name (an error naming the columns if it is missing).

Tiers split the *training* documents (held-out ones excluded) sorted by (score, content hash) into three runs of
about equal token counts, so each tier can supply about a third of the training tokens: a document belongs to the
tercile its token midpoint falls in. Held-out documents belong to no tier (the held-out set is shared).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

TIERS = ("low", "medium", "high")
SCORE_COLUMN = "quality_score"  # the column `auto` uses when the dataset has one

_CODE_EXTENSIONS = {
    ".py",
    ".pyi",
    ".js",
    ".ts",
    ".java",
    ".c",
    ".cc",
    ".cpp",
    ".h",
    ".hpp",
    ".go",
    ".rs",
    ".rb",
    ".php",
    ".cs",
    ".swift",
    ".kt",
    ".scala",
    ".sh",
    ".lua",
    ".r",
    ".jl",
    ".m",
    ".sql",
}
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|#include|return\b|if\b.*[:{]$|for\b.*[:{]$|while\b|function\b|"
    r"var |let |const |public |private |static |fn |func |package |[\w.\[\]]+\s*[-+*/%|&]?=\s*\S)|[:;{}()\[\],]\s*$"
)
_SPACE_BYTES = b" \t\n\r\x0b\x0c"
_WORD_BYTES = bytes(sorted(set(range(48, 58)) | set(range(65, 91)) | set(range(97, 123)) | {95}))
_TRIVIAL = {"pass", "...", ")", "]", "}", "),", "],", "},", ");", "};", "else:", "try:", "finally:", "{", "(", "["}
_STOPWORDS = {"the", "be", "to", "of", "and", "that", "have", "with", "a", "in", "is", "it", "for", "on", "as"}


@runtime_checkable
class QualityScorer(Protocol):
    """Scores one document; higher is better. Scores only order documents, so any scale works."""

    name: str

    def score(self, text: str, doc_id: str = "") -> float: ...


def _clip(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


class CodeQualityScorer:
    """A heuristic for source code, in [0, 1]: commentary (comments and docstrings) up to about a quarter of the
    lines, readable line lengths, a high share of non-trivial lines, mostly alphanumeric content (not data tables);
    test code scores 0.6x library code, and files under 20 non-blank lines are discounted."""

    name = "code"

    def score(self, text: str, doc_id: str = "") -> float:
        lines = [line for line in text.split("\n") if line.strip()]
        n = len(lines)
        if n == 0:
            return 0.0
        commentary = nontrivial = long = 0
        length = 0
        in_doc: str | None = None
        for line in lines:
            stripped = line.strip()
            length += len(line)
            long += len(line) > 100
            quotes = [q for q in ('"""', "'''") if q in stripped]
            if in_doc is not None:
                commentary += 1
                if stripped.count(in_doc) % 2 == 1:
                    in_doc = None
                continue
            if stripped.startswith(("#", "//", "/*", "*")):
                commentary += 1
                continue
            if quotes and stripped.startswith(('"""', "'''", 'r"""', "r'''")):
                commentary += 1
                q = quotes[0]
                if stripped.count(q) % 2 == 1:
                    in_doc = q
                continue
            if (
                stripped in _TRIVIAL
                or stripped.startswith(("import ", "from "))
                or not any(c.isalnum() for c in stripped)
            ):
                continue
            nontrivial += 1
        density = commentary / n
        c_comment = min(1.0, density / 0.25) if density <= 0.6 else _clip(1 - (density - 0.6) / 0.4)
        mean_len = length / n
        c_len = (1 - min(1.0, 5 * long / n)) * (1.0 if 12 <= mean_len <= 70 else _clip(1 - abs(mean_len - 41) / 80))
        c_nontrivial = nontrivial / n
        raw = text.encode("utf-8", errors="replace")
        visible = len(raw.translate(None, _SPACE_BYTES))
        alnum = (visible - len(raw.translate(None, _WORD_BYTES))) / max(1, visible)  # ASCII letters, digits, _
        c_alnum = min(1.0, alnum / 0.7)
        test_like = _is_test(text, doc_id)
        quality = 0.3 * c_comment + 0.25 * c_len + 0.25 * c_nontrivial + 0.2 * c_alnum
        return quality * (0.6 if test_like else 1.0) * (0.5 + 0.5 * min(1.0, n / 20))


def _is_test(text: str, doc_id: str) -> bool:
    parts = re.split(r"[/\\]", doc_id.lower())
    if any(p in ("test", "tests", "testing") for p in parts[:-1]) or re.match(r"(test_.*|.*_test\.\w+)$", parts[-1]):
        return True
    tests = len(re.findall(r"^\s*(def test|class Test|assert |self\.assert)", text, flags=re.M))
    return tests >= 5 and tests > text.count("\n") / 20


class ProseQualityScorer:
    """A heuristic for natural-language text in [0, 1] after Gopher-style rules: plausible word lengths, mostly
    alphabetic words, few symbols, lines that end as sentences, few duplicate lines, common function words;
    documents under 50 words are discounted."""

    name = "prose"

    def score(self, text: str, doc_id: str = "") -> float:
        words = text.split()
        if len(words) < 5:
            return 0.0
        mean_word = sum(map(len, words)) / len(words)
        p_word = 1.0 if 3 <= mean_word <= 10 else _clip(1 - min(abs(mean_word - 3), abs(mean_word - 10)) / 5)
        p_alpha = min(1.0, sum(any(c.isalpha() for c in w) for w in words) / len(words) / 0.8)
        symbols = sum(w.count("#") + w.count("...") + w.count("{") + w.count("}") for w in words)
        p_symbol = _clip(1 - symbols / len(words) / 0.1)
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        p_sentence = sum(line[-1] in ".!?\"'" for line in lines) / len(lines)
        p_unique = len(set(lines)) / len(lines)
        stop = sum(w.lower().strip(".,;:!?\"'") in _STOPWORDS for w in words)
        p_stop = min(1.0, stop / (0.08 * len(words)))
        quality = (p_word + p_alpha + p_symbol + p_sentence + p_unique + p_stop) / 6
        return quality * (0.5 + 0.5 * min(1.0, len(words) / 50))


SCORERS: dict[str, type] = {"code": CodeQualityScorer, "prose": ProseQualityScorer}


def looks_like_code(samples: Sequence[tuple[str, str]]) -> bool:
    """Whether most of these (id, text) samples are source code: a code file extension or code-shaped lines."""
    votes = 0
    for doc_id, text in samples:
        ext = doc_id[doc_id.rfind(".") :].lower() if "." in doc_id else ""
        lines = [line for line in text.split("\n")[:400] if line.strip()]
        shaped = sum(bool(_CODE_LINE.search(line)) for line in lines) / max(1, len(lines))
        votes += ext in _CODE_EXTENSIONS or shaped >= 0.3
    return votes * 2 >= max(1, len(samples))


def resolve_scorer(
    setting: str, columns: Sequence[str], default_code: bool | None, samples: Sequence[tuple[str, str]]
) -> tuple[str, QualityScorer | None]:
    """(scorer name, scorer); the scorer is None when the scores come from the dataset column of that name.

    `default_code` forces `auto`'s choice (True for the Python-source corpora); None decides from `samples`.
    Raises ValueError naming the dataset's columns when a named column is missing.
    """
    if setting in SCORERS:
        return setting, SCORERS[setting]()
    if setting == "auto":
        if SCORE_COLUMN in columns:
            return SCORE_COLUMN, None
        code = default_code if default_code is not None else looks_like_code(samples)
        return ("code", CodeQualityScorer()) if code else ("prose", ProseQualityScorer())
    if setting in columns:
        return setting, None
    raise ValueError(
        f"quality_scorer '{setting}' is neither a scorer (auto, code, prose) nor a column of the dataset; "
        f"its columns are {', '.join(columns)}"
    )


def assign_tiers(scores: np.ndarray, lengths: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """Tier index (0 low, 1 medium, 2 high) of each document: token-weighted terciles of (score, digest) order."""
    n = len(scores)
    tiers = np.zeros(n, dtype=np.int8)
    if n == 0:
        return tiers
    clean = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((digests, clean))  # by score, ties by content hash
    sorted_lengths = lengths[order].astype(np.float64)
    total = sorted_lengths.sum()
    midpoints = np.cumsum(sorted_lengths) - sorted_lengths / 2
    tiers[order] = np.minimum(2, np.floor(3 * midpoints / max(total, 1.0))).astype(np.int8)
    return tiers
