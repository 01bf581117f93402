"""Realistic Doc Gen failure texts. A job's text is chosen from its id, not drawn from the RNG,
so the same job reads the same on every request and seeding stays cheap."""

from __future__ import annotations

# Fatal problems: the job ends `failed` and no document is produced.
ERRORS: tuple[str, ...] = (
    "The tag 'customer_name' was not provided in the input data.",
    "The tag 'invoice.total' was not provided in the input data.",
    "Template parsing failed: the tag '{{#each line_items}}' at paragraph 14 is not closed.",
    "Template parsing failed: unexpected token '}}' in tag '{{customer.address}' at paragraph 3.",
    "The template file version could not be found.",
    "The template file is not a valid .docx document.",
    "The user does not have upload access to the destination folder.",
    "The input data for tag 'line_items' must be an array, but an object was provided.",
    "The generated document exceeds the maximum allowed size.",
    "Document generation timed out.",
)

# Non-fatal problems: the job ends `completed_with_error` with a possibly incomplete document.
WARNINGS: tuple[str, ...] = (
    "The tag 'optional_field' was provided but not used in the template.",
    "The tag 'notes' was not provided in the input data; it was left empty.",
    "The image for tag 'company_logo' could not be loaded; a blank placeholder was used.",
    "The table 'line_items' had no rows and was removed from the document.",
    "The value of tag 'amount' is not a number; it was rendered as text.",
    "The font 'Brand Sans' is not available; a substitute font was used.",
)

# Knuth's multiplicative hash spreads consecutive ids across the catalogue.
_SPREAD = 2654435761


def error_for(job_id: int) -> str:
    return ERRORS[(job_id * _SPREAD) % (1 << 32) % len(ERRORS)]


def warning_for(job_id: int) -> str:
    return WARNINGS[(job_id * _SPREAD) % (1 << 32) % len(WARNINGS)]
