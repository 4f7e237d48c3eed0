"""What a teacher's tokens cost: a built-in USD-per-million-token table, overridable from the config."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import TeacherConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Price:
    """USD per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for this many tokens."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


# Paid-tier list prices (text, standard context); keep in step with the providers' pricing pages.
PRICES: dict[str, Price] = {
    "gemini-2.5-pro": Price(1.25, 10.00),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-flash-lite": Price(0.10, 0.40),
    "gemini-2.0-flash": Price(0.10, 0.40),
    "gemini-2.0-flash-lite": Price(0.075, 0.30),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
}

# A known name followed by one of these is a dated or tagged variant of it ("gemini-2.5-flash-001").
_VARIANT_SEPARATORS = ("-", "@", ":")


def lookup(model: str) -> Price | None:
    """The table's price for `model`: an exact match, else the longest known name it is a variant of."""
    name = model.strip().lower().removeprefix("models/")
    if name in PRICES:
        return PRICES[name]
    # Longest first so "gemini-2.5-flash-lite-001" is not priced as "gemini-2.5-flash".
    for known in sorted(PRICES, key=len, reverse=True):
        if name.startswith(known) and name[len(known)] in _VARIANT_SEPARATORS:
            return PRICES[known]
    return None


def price_for(cfg: TeacherConfig) -> Price:
    """The config's prices where given, the table's for the rest; `ConfigError` if neither knows."""
    given_in, given_out = cfg.price_input_per_mtok, cfg.price_output_per_mtok
    if given_in is not None and given_out is not None:
        return Price(given_in, given_out)
    known = lookup(cfg.model)
    if known is None:
        missing = "price_input_per_mtok" if given_in is None else "price_output_per_mtok"
        raise ConfigError(
            f"[teacher].{missing}",
            f"no built-in price for model {cfg.model!r}",
            "set [teacher].price_input_per_mtok and [teacher].price_output_per_mtok (USD per million tokens)",
        )
    return Price(
        known.input_per_mtok if given_in is None else given_in,
        known.output_per_mtok if given_out is None else given_out,
    )
