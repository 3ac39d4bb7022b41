"""The bundle key split among officials with SLIP-39 (the `shamir-mnemonic` library): any K of N shares.

A share is 33 words (a 256-bit key) with its own RS1024 checksum, so one mistyped word is caught on
that share alone, before anything is combined. All shares of one split carry the same 15-bit
identifier: the vault's bundle header records it, so a share of an earlier bundle version is named
as such instead of failing as a bad combination.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import shamir_mnemonic
from shamir_mnemonic import MnemonicError, Share
from shamir_mnemonic.wordlist import WORD_INDEX_MAP

from embassy.errors import OptionInvalid, SharesRefused, UserError

KEY_BYTES = 32  # AES-256 / ChaCha20 key
MAX_SHARES = 16  # SLIP-39's limit on a group's members
MAX_DRAWS = 64  # identifier draws: with up to 9999 versions taken, 64 clashes in a row have odds below 1e-33


@dataclass(frozen=True)
class ShareText:
    """One share as an official hands it in: its words, where it came from, and the sheet's header if any."""

    words: str
    source: str  # a file path, or "stdin share 2"
    stack: str | None = None  # from the sheet's `# stack:` line
    version: int | None = None  # from the sheet's `# bundle version:` line


@dataclass(frozen=True)
class ParsedShare:
    text: ShareText
    share: Share

    @property
    def identifier(self) -> int:
        return int(self.share.identifier)

    @property
    def member(self) -> int:
        """The official's number, 1-based (SLIP-39's member index + 1)."""
        return int(self.share.index) + 1


def check_counts(officials: int, threshold: int) -> None:
    if not 1 <= officials <= MAX_SHARES:
        raise OptionInvalid(f"--officials {officials}: SLIP-39 splits among 1 to {MAX_SHARES} officials",
                            f"give --officials between 1 and {MAX_SHARES}")
    if not 1 <= threshold <= officials:
        raise OptionInvalid(f"--threshold {threshold} with --officials {officials}: the threshold must be 1..{officials}",
                            "give a --threshold no larger than --officials")
    if threshold == 1 and officials > 1:
        raise OptionInvalid(f"--threshold 1 with --officials {officials}: any one official alone would open the bundle "
                            "(SLIP-39 refuses it)", "give --threshold 2 or more, or --officials 1")


def split(key: bytes, officials: int, threshold: int, taken: frozenset[int] = frozenset()) -> list[str]:
    """N mnemonics of which any K recover `key`, with an identifier none of the `taken` (earlier versions') has."""
    check_counts(officials, threshold)
    for _ in range(MAX_DRAWS):  # the identifier is 15 random bits: draw again on the rare clash with an earlier version
        groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, officials)], key, b"")
        if identifier_of(groups[0][0]) not in taken:
            return list(groups[0])
    # Only signed headers fill `taken` (at most one per version): this is never reached by a forged vault.
    raise UserError(f"no free share identifier in {MAX_DRAWS} draws ({len(taken)} of 32768 taken)",
                    "start a kit under a new stack name")


def fingerprint(words: str) -> str:
    """A short digest that lets an official check a share against the sheet, without revealing it."""
    return hashlib.sha256(b"embassy-custody-share\0" + normal(words).encode()).hexdigest()[:16]


def identifier_of(words: str) -> int:
    return int(Share.from_mnemonic(normal(words)).identifier)


def normal(words: str) -> str:
    return " ".join(words.lower().split())


HEADER = re.compile(r"^#\s*(?P<key>stack|bundle version)\s*:\s*(?P<value>\S+)", re.IGNORECASE)


def parse_text(text: str, source: str) -> ShareText:
    """A share from a sheet's .txt (its `#` header read, numbers dropped) or from typed words."""
    words: list[str] = []
    stack, version = None, None
    for line in text.splitlines():
        head = HEADER.match(line.strip())
        if head:
            if head["key"].lower() == "stack":
                stack = head["value"]
            elif head["value"].isdigit():
                version = int(head["value"])
            continue
        if line.lstrip().startswith("#"):
            continue
        words += re.findall(r"[a-zA-Z]+", line)
    return ShareText(" ".join(w.lower() for w in words), source, stack, version)


def parse(text: ShareText) -> ParsedShare:
    """One share, checked on its own: its words and RS1024 checksum. SharesRefused names it and why."""
    if not text.words:
        raise SharesRefused(f"{text.source}: no words", "give the file of the official's sheet (official-<i>.txt)")
    unknown = [(i + 1, w) for i, w in enumerate(text.words.split()) if w not in WORD_INDEX_MAP]
    if unknown:
        where = ", ".join(f"word {i} '{w}'" for i, w in unknown[:3])
        raise SharesRefused(f"{text.source}: mistyped: {where} is not a SLIP-39 word",
                            "type that word again from the official's sheet")
    try:
        share = Share.from_mnemonic(text.words)
    except MnemonicError as exc:
        reason = str(exc)
        if "checksum" in reason.lower():
            reason = "its checksum fails: a word is mistyped or two are swapped"
        raise SharesRefused(f"{text.source}: mistyped: {reason}", "type the share again from the official's sheet") from None
    return ParsedShare(text, share)


def combine(shares: list[ParsedShare], threshold: int) -> bytes:
    """The key from K distinct shares of one split (the caller checked they belong to the bundle)."""
    members: dict[int, ParsedShare] = {}
    for s in shares:
        if s.member in members and normal(members[s.member].text.words) != normal(s.text.words):
            raise SharesRefused(f"{s.text.source} and {members[s.member].text.source} are both official {s.member}'s "
                                "share but differ: one is mistyped", "type both again from the sheet")
        members.setdefault(s.member, s)
    if len(members) < threshold:
        given = ", ".join(f"official {m}" for m in sorted(members)) or "none"
        raise SharesRefused(f"{len(members)} distinct share(s) given ({given}), {threshold} needed to open the bundle",
                            f"gather {threshold - len(members)} more official(s) with their sheets of this bundle version")
    chosen = list(members.values())[:threshold]  # SLIP-39 takes exactly K: the first K given, each already checked
    try:
        return bytes(shamir_mnemonic.combine_mnemonics([s.text.words for s in chosen], b""))
    except MnemonicError as exc:
        raise SharesRefused(f"the shares do not combine: {exc}",
                            "one share is forged or from another split: check each sheet's fingerprint") from None
