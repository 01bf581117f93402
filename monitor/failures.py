"""Failure signatures: Box's error texts grouped by what went wrong, not by which tag or file.

`The tag 'customer_name' was not provided` and `The tag 'city' was not provided` are one
problem met twice; an operator wants "42 jobs: the tag '…' was not provided (e.g.
customer_name, city)", not 42 lines. The signature is the text with quoted names, file
names, ids and numbers replaced by placeholders; what they replaced is kept as the group's
examples. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from monitor.model import JobState

#: A signature longer than this is cut (an error text is untrusted and unbounded).
MAX_SIGNATURE_CHARS = 300
#: Distinct values (and job texts) a group keeps as examples.
MAX_EXAMPLES = 5
#: A value longer than this is shortened in the examples.
MAX_VALUE_CHARS = 80
#: Distinct texts whose signature is remembered: Box's texts repeat (one per problem and tag),
#: and the page groups up to 2,000 failures every few seconds.
CACHED_TEXTS = 4096

NAME = "'…'"
FILE = "<file>"
ID = "<id>"
NUMBER = "<n>"

# Quoted names: 'x', "x", `x`, and typographic single and double quotes (U+2018/9, U+201C/D).
# The value is what varies.
_QUOTED = re.compile(r"'([^'\n]{1,200})'|\"([^\"\n]{1,200})\"|`([^`\n]{1,200})`"
                     "|\u2018([^\u2019\n]{1,200})\u2019|\u201c([^\u201d\n]{1,200})\u201d")
# A file name: a word with an extension of 2 to 5 letters (`Invoice 2024.docx` keeps its
# first word; good enough for grouping). A version number like 1.2 has digits, not letters.
_FILE = re.compile(r"(?<![\w.])[\w\-]+(?:\.[\w\-]+)*\.[A-Za-z][A-Za-z0-9]{1,4}\b")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}\b")
# A long hex or alphanumeric token with digits in it: a request id, a hash.
_TOKEN_ID = re.compile(r"\b(?=[0-9A-Za-z_-]*\d)(?=[0-9A-Za-z_-]*[A-Za-z])[0-9A-Za-z_-]{12,}\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=CACHED_TEXTS)
def signature(text: str) -> str:
    """The error text with what varies between jobs replaced: quoted names by `'…'`, file
    names by `<file>`, ids by `<id>`, numbers by `<n>`; whitespace collapsed."""
    sig = _QUOTED.sub(NAME, text)
    sig = _FILE.sub(FILE, sig)
    sig = _UUID.sub(ID, sig)
    sig = _TOKEN_ID.sub(ID, sig)
    sig = _NUMBER.sub(NUMBER, sig)
    sig = _SPACE.sub(" ", sig).strip()
    if len(sig) > MAX_SIGNATURE_CHARS:
        sig = sig[: MAX_SIGNATURE_CHARS - 1] + "…"
    return sig


def varying_values(text: str) -> list[str]:
    """The quoted names and file names of `text`, in order: what makes it one example of its
    group (`customer_name`)."""
    return list(_varying_values(text))


@lru_cache(maxsize=CACHED_TEXTS)
def _varying_values(text: str) -> tuple[str, ...]:
    values = [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(text)]
    values += _FILE.findall(_QUOTED.sub(" ", text))
    return tuple(_shorten(v) for v in values)


@dataclass
class FailureGroup:
    """Jobs whose failure texts share one signature. `jobs` counts jobs (a job with the same
    signature twice counts once); `examples` holds up to MAX_EXAMPLES distinct varying values,
    `texts` up to MAX_EXAMPLES distinct raw texts, `job_ids` a few jobs to look at."""

    signature: str
    jobs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    batches: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    last_at: float = 0.0

    def add(self, job: JobState, text: str) -> None:
        self.jobs += 1
        self.statuses[job.status] = self.statuses.get(job.status, 0) + 1
        self.batches.add(job.batch_id)
        self.templates.add(job.template_file_id)
        self.last_at = max(self.last_at, job.changed_at)
        if len(self.job_ids) < MAX_EXAMPLES:
            self.job_ids.append(job.id)
        self.note(text)

    def note(self, text: str) -> None:
        """Keep `text` and its varying values as examples (room permitting)."""
        for value in _varying_values(text):
            if value not in self.examples and len(self.examples) < MAX_EXAMPLES:
                self.examples.append(value)
        if text not in self.texts and len(self.texts) < MAX_EXAMPLES:
            self.texts.append(text)


def failure_texts(job: JobState) -> tuple[str, ...]:
    """What went wrong with a job: its errors, else (completed with error) its warnings."""
    return job.errors or job.warnings


def group_failures(jobs: Iterable[JobState]) -> list[FailureGroup]:
    """Jobs grouped by the signatures of their failure texts, largest group first (then the
    most recent). A job without any text falls in the group of the empty signature."""
    groups: dict[str, FailureGroup] = {}
    for job in jobs:
        seen: set[str] = set()
        for text in failure_texts(job) or ("",):
            sig = signature(text)
            if sig in seen:
                groups[sig].note(text)  # the same job again: its values, not a second count
                continue
            seen.add(sig)
            groups.setdefault(sig, FailureGroup(sig)).add(job, text)
    return sorted(groups.values(), key=lambda g: (-g.jobs, -g.last_at, g.signature))


def _shorten(value: str) -> str:
    value = _SPACE.sub(" ", value).strip()
    return value if len(value) <= MAX_VALUE_CHARS else value[: MAX_VALUE_CHARS - 1] + "…"
