"""SLIP-39 shares of the bundle key: any K of N recover it; K-1, a mistyped word, another split are refused by name."""

from __future__ import annotations

import itertools
import os

import pytest

from embassy.custody import shares
from embassy.custody.shares import ShareText
from embassy.errors import EXIT_USAGE, OptionInvalid, SharesRefused


def texts(words: list[str]) -> list[ShareText]:
    return [ShareText(w, f"official-{i + 1}.txt") for i, w in enumerate(words)]


def test_any_k_of_n_shares_recover_the_key() -> None:
    key = os.urandom(32)
    words = shares.split(key, 5, 3)
    assert len(words) == 5 and all(len(w.split()) == 33 for w in words)
    for chosen in itertools.combinations(texts(words), 3):
        assert shares.combine([shares.parse(t) for t in chosen], 3) == key
    # More than K works too; order does not matter.
    assert shares.combine([shares.parse(t) for t in reversed(texts(words))], 3) == key


def test_k_minus_one_shares_are_refused_naming_who_gave_them() -> None:
    words = shares.split(os.urandom(32), 5, 3)
    with pytest.raises(SharesRefused) as err:
        shares.combine([shares.parse(t) for t in texts(words)[:2]], 3)
    assert "2 distinct share(s) given (official 1, official 2), 3 needed" in err.value.message
    assert err.value.code == EXIT_USAGE
    # The same share twice is one official, not two.
    with pytest.raises(SharesRefused, match="2 distinct share"):
        shares.combine([shares.parse(t) for t in [*texts(words)[:2], texts(words)[0]]], 3)


def test_one_changed_word_is_named_as_mistyped() -> None:
    words = shares.split(os.urandom(32), 3, 2)[1].split()
    # Another real SLIP-39 word in place of the 7th: only the checksum can tell.
    words[6] = "academic" if words[6] != "academic" else "acid"
    with pytest.raises(SharesRefused) as err:
        shares.parse(ShareText(" ".join(words), "official-2.txt"))
    assert err.value.message.startswith("official-2.txt: mistyped: its checksum fails")
    # A word that is not in the list is named with its position.
    words[6] = "embasy"
    with pytest.raises(SharesRefused, match=r"official-2.txt: mistyped: word 7 'embasy' is not a SLIP-39 word"):
        shares.parse(ShareText(" ".join(words), "official-2.txt"))


def test_shares_of_two_splits_do_not_combine() -> None:
    a = shares.split(os.urandom(32), 3, 2)
    b = shares.split(os.urandom(32), 3, 2, frozenset({shares.identifier_of(a[0])}))
    assert shares.identifier_of(a[0]) != shares.identifier_of(b[0])
    with pytest.raises(SharesRefused, match="do not combine"):
        shares.combine([shares.parse(ShareText(a[0], "a")), shares.parse(ShareText(b[1], "b"))], 2)


def test_the_sheet_text_is_read_back_with_its_header() -> None:
    words = shares.split(os.urandom(32), 2, 2)[0]
    numbered = "\n".join(f"{i + 1:2d} {w}" for i, w in enumerate(words.split()))
    got = shares.parse_text(f"# stack: rehearsal\n# bundle version: 3\n# fingerprint: abc\n\n{numbered}\n", "f")
    assert (got.words, got.stack, got.version) == (words, "rehearsal", 3)
    assert shares.parse_text(words.upper(), "typed").words == words  # typed in capitals


@pytest.mark.parametrize(("officials", "threshold", "says"), [
    (3, 4, "no larger than --officials"), (3, 1, "any one official alone"), (17, 3, "1 to 16"), (0, 0, "1 to 16")])
def test_impossible_counts_are_refused(officials: int, threshold: int, says: str) -> None:
    with pytest.raises(OptionInvalid) as err:
        shares.split(os.urandom(32), officials, threshold)
    assert says in err.value.message or says in err.value.hint


def test_the_fingerprint_names_the_share_without_revealing_it() -> None:
    words = shares.split(os.urandom(32), 2, 2)
    assert shares.fingerprint(words[0]) != shares.fingerprint(words[1])
    assert shares.fingerprint(words[0]) == shares.fingerprint("  " + words[0].upper())
    assert not any(w in shares.fingerprint(words[0]) for w in words[0].split())
