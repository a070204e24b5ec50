"""When a response may reach the client as the upstream's own bytes, not re-serialised.

Writing a parsed body out again costs about as much as parsing it, and when no response
stage changed a message the upstream's bytes say the same thing. They are forwarded only
when all of these hold:

- every message is the very object the stages got (stages copy what they change, so a
  filtered listing, a masked value or a gateway error makes a new object);
- the bytes hold no escape that could spell a value other than as written (`\\u0041`,
  `\\/`): a reader of the raw bytes (a log, a byte filter downstream) sees what was
  checked. (The injected-credential guard reads the parsed messages, escapes decoded.)
  The short escapes left (`\\"`, `\\\\`, `\\n`...) are written as `json.dumps` writes them;
- no number is written with more digits than a float keeps (16 or more, with a fraction
  or exponent): the gateway read it rounded and masked what it read, a client reading
  exact decimals would see the digits. Integers are read exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import is_
from typing import Any

import re2

# One RE2 pass finds both: escapes that could hide a value, and long numbers to look at.
_SUSPECT = re2.compile(rb"\\[u/]|[0-9][0-9.]{15,}[eE]?")


def verbatim(data: bytes, received: Sequence[Any], sent: Sequence[Any]) -> bool:
    """Whether `data` (which parsed to `received`) may be sent as is for `sent`."""
    if len(received) != len(sent) or not all(map(is_, received, sent)):
        return False
    return not any(map(_not_verbatim, _SUSPECT.findall(data)))


def _not_verbatim(found: bytes) -> bool:
    """An escape, or 16+ digits with a fraction or exponent: more than a float keeps
    (integers are read exactly)."""
    return found[:1] == b"\\" or b"." in found or found[-1:] in (b"e", b"E")
