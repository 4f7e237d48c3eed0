"""The check between a nearest neighbour and a cache hit: do the two questions really ask the same thing?

Sentence embeddings score "with alcohol" vs "with coffee", "7B" vs "70B" or "up" vs "down" HIGHER than
most true paraphrases (median cosine 0.90 vs 0.86 on all-MiniLM-L6-v2), so a similarity threshold alone
serves wrong answers. `check_match` is pure and model-free: it compares numbers, negation, direction and
polarity words, question words, tense, operators in code or arithmetic, the objects of "to/from/than",
and finally the content words after stop-word removal, light stemming and a small synonym map. Any
difference is a miss: a miss only costs a student answer, a false hit serves a wrong one.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class MatchCheck:
    """Whether a candidate may be served for a query, and why not when it may not."""

    ok: bool
    reason: str


# --- normalising chat messages --------------------------------------------------------------------

def _content_text(content: Any) -> str:
    # OpenAI clients may send content as a list of parts; only text parts say what is asked.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def normalize_prompt(messages: Iterable[Mapping[str, Any]]) -> str:
    """The text the cache embeds and verifies: the last user turn first, then system and earlier user turns.

    The last user turn leads because the embedder truncates long inputs (256 tokens): a long system
    prompt must not push the actual question out. Assistant turns are left out; they follow from the
    user turns and would only add noise.
    """
    turns = [(str(m.get("role", "")), _collapse(_content_text(m.get("content")))) for m in messages]
    turns = [(role, text) for role, text in turns if role in ("system", "developer", "user") and text]
    last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i][0] == "user"), None)
    if last_user is None:
        return " ".join(text for _, text in turns)
    question = turns[last_user][1]
    context = [f"{role}: {text}" for i, (role, text) in enumerate(turns) if i != last_user]
    return question if not context else question + "\n" + " | ".join(context)


# --- word lists -----------------------------------------------------------------------------------

# Function words that never change what is asked. Deliberately NOT here although classic stop lists
# have them: not/no/nor (negation), up/down/over/under/before/after/above/below/off/out (direction),
# all/most/few/more/less (quantity), who/when/where/why (question type).
_STOP_WORDS = frozenset("""
a an the is are was were be been being am do does did doing have has had having can could would should
will shall may might must i me my mine myself you your yours yourself we us our ours it its itself he him
his she her they them their this that these those there here what which how to of in on at for from
with about as into onto through via and or but if then so than just also too very much many some any
get got getting gets let lets using between
""".split())

# Words that frame a question rather than carry its subject ("explain X" == "what is X").
_FILLER_WORDS = frozenset("""
tell explain describe know want wonder wondering curious like way ways method methods approach
possible able help please kindly thanks thank hi hey exactly actually really basically simply
currently current now located situated common commonly typical typically usually generally step steps
process procedure instructions thing things stuff someone somebody something anyone anybody anything
give ever even safe okay ok fine good great people
""".split())

_NEGATIONS = frozenset("not no never without none neither nor cannot nothing nobody nowhere".split())

# Words whose presence flips the answer; compared by presence after canonicalisation, so a pair like
# up/down is caught even when only one side has either word.
_DIRECTION_WORDS = """
up down before after increase decrease increasing decreasing more less fewer min max minimum maximum
above below over under first last high low higher lower highest lowest raise rise fall left right out
off open close start stop begin end hot cold warm cool early late today tomorrow yesterday fast slow
cheap expensive big small large long short old new young top bottom inside outside push pull add
upload download import export buy sell win lose north south east west best worst bad better worse
plus minus positive negative true false male female morning evening night summer winter spring autumn
all every most few dangerous healthy unhealthy legal illegal by
""".split()

_QUESTION_WORDS = frozenset({"who", "when", "where", "why"})  # what/how/which interchange in paraphrases

# Auxiliaries that fix the tense: "Who was president" and "Who is president" have different answers.
_PAST = frozenset({"was", "were", "did", "had"})
_PRESENT = frozenset({"is", "are", "am", "do", "does", "has"})
_FUTURE = frozenset({"will", "shall"})

# Operators in code or arithmetic; "5 + 3" vs "5 - 3" and "f(a)" vs "f(b)" differ in nothing else.
_SYMBOLS = frozenset("+-*/=<>^(){}[];`|&~\\")

# Prepositions whose object must not swap ("Celsius to Fahrenheit" vs "Fahrenheit to Celsius").
_ORDERED_PREPOSITIONS = ("to", "into", "from", "than", "onto", "towards")

_WRITTEN_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "dozen": 12}
_BIG_SCALES = {"million": "m", "billion": "b", "trillion": "t"}  # kept as suffixes, like "7B"
_ORDINALS = {"first": "1st", "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th", "sixth": "6th",
             "seventh": "7th", "eighth": "8th", "ninth": "9th", "tenth": "10th"}

# Synonym groups; every member maps to the first one's stem. Common paraphrase pairs only: a wrong
# group would merge two different questions, a missing one only costs a hit.
_SYNONYM_GROUPS = (
    ("buy", "purchase", "bought", "purchasing"), ("car", "automobile"), ("big", "large", "huge"),
    ("small", "little", "tiny"), ("slow", "slowly", "slower", "slowest"),
    ("fast", "quick", "quickly", "rapid", "rapidly", "speedy", "faster", "quicker", "fastest", "quickest"),
    ("remove", "delete", "erase"), ("fix", "repair"), ("tire", "tyre"), ("start", "begin", "commence"),
    ("create", "make", "made", "build", "built", "generate"), ("change", "replace", "modify", "alter", "swap"),
    ("calculate", "compute", "find", "determine"), ("recommend", "suggest", "recommendation", "suggestion"),
    ("doctor", "physician"), ("movie", "film"), ("picture", "photo", "image"), ("dictionary", "dict"),
    ("convert", "transform", "conversion"), ("write", "wrote", "written", "writer", "author"),
    ("paint", "painted", "painter"), ("invent", "invented", "inventor", "invention"),
    ("differ", "difference", "different", "distinguish"),
    ("tall", "high", "height", "higher", "taller", "highest", "tallest"),
    ("cost", "price"), ("symptom", "symptoms"), ("unhealthy", "harmful"), ("child", "children", "kid", "kids"),
    ("person", "people", "persons"), ("computer", "pc"), ("pan", "skillet"), ("vacation", "holiday"),
    ("prevent", "avoid"), ("learn", "study"), ("sick", "ill"), ("illness", "disease"), ("job", "occupation"),
    ("cheap", "inexpensive", "affordable", "cheaper", "cheapest"), ("smart", "intelligent", "clever"),
    ("answer", "reply", "respond"), ("close", "shut"), ("display", "show"), ("hard", "difficult"),
    ("easy", "simple", "easiest", "simplest"), ("clean", "wash"), ("acetaminophen", "paracetamol", "tylenol"),
    ("mean", "meaning", "define", "definition"), ("need", "require", "required", "requirement"),
    ("kilometer", "kilometre", "km"), ("mile", "mi"), ("kilogram", "kg", "kilo"), ("pound", "lb", "lbs"),
    ("celsius", "centigrade"), ("minute", "mins"), ("hour", "hr", "hrs"),
    ("bad", "poor"), ("largest", "biggest"), ("smallest", "tiniest"),
    ("use", "used", "uses", "utilize", "utilise"), ("add", "added", "adding", "adds"),
    ("minimum", "min"), ("maximum", "max"), ("easily", "easy"),
    ("error", "exception"), ("run", "ran", "running"), ("go", "went", "gone"), ("eat", "ate", "eaten"),
    ("man", "men"), ("woman", "women"), ("mouse", "mice"), ("foot", "feet"), ("tooth", "teeth"),
    ("grow", "grew", "grown"), ("take", "took", "taken"), ("drink", "drank"), ("say", "said"),
    ("best", "top"), ("undo", "revert", "rollback"), ("license", "licence"),
)

# Multi-word paraphrases, rewritten before tokenising (order matters: longer phrases first).
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"\bunited states(?: of america)?\b|\bamerica\b|\bu\.s\.(?:a\.)?", " usa "),
    (r"\bunited kingdom\b|\bgreat britain\b|\bbritain\b|\bu\.k\.", " uk "),
    (r"\bright now\b", " now "), (r"\b(?:find|figure) out\b", " know "),
    (r"\bwhat time is it\b", " time "), (r"\bcapital city\b", " capital "),
    (r"\bhow many people live in\b", " population of "), (r"\b(boiling|freezing|melting) point\b", r" \1 temperature "),
    (r"\b(?:is|are|am) (\w+) going to\b", r" will \1 "), (r"\bspeed up\b", " make faster "),
    (r"\bslow down\b", " make slower "), (r"\bsci-?fi\b", " science fiction "),
    (r"\bhow long (?:do|does|can|will) (\w+) live\b", r" lifespan \1 "),
    (r"\b(?:what|which) (?:time|year|date|day)\b|\bat what time\b|\bin what year\b", " when "),
    (r"\bwhat (?:causes|caused|makes|made)\b|\bwhat is the reason\b|\bfor what reason\b|\bhow come\b", " why "),
    (r"\bhow far\b", " distance "), (r"\bhow old\b", " age "), (r"\bhow (?:tall|high)\b", " height "),
    (r"\bhow long (?:does|will|would|did) it take (?:to|for)\b", " how long "),
    (r"\b(?:stand|stands) for\b|\bshort for\b|\bfull form of\b|\babbreviation (?:of|for)\b", " acronym "),
    (r"\bhow (?:do|would|can) (?:you|i|we) say\b|\bwhat is the word for\b", " translate "),
    (r"\bget rid of\b", " remove "), (r"\bturn ((?:\w+ ){1,3}?)into\b", r" convert \1 to "),
    (r"\bbad for (?:you|your health|health|humans)\b", " unhealthy "),
    (r"\bgood for (?:you|your health|health|humans)\b", " healthy "),
    (r"\b(?:the )?(?:best|right|proper|correct|recommended|good) (?:way|method|approach) (?:to|of)\b", " how to "),
    (r"\bmost recent\b|\blatest\b", " last "), (r"\b(?:log|sign) ?in\b", " login "),
    (r"\b(?:log|sign) ?out\b", " logout "), (r"\bset up\b", " setup "),
    (r"\ba lot of\b|\blots of\b", " many "), (r"\bin order to\b", " to "),
    (r"\b(?:per|every|each|a|an) (day|week|month|year|hour)\b", r" per\1 "),
    (r"\bdaily\b", " perday "), (r"\bweekly\b", " perweek "), (r"\bmonthly\b", " permonth "),
    (r"\b(?:yearly|annually)\b", " peryear "), (r"\bhourly\b", " perhour "),
    (r"\b(?:give|tell|show) me\b|\b(?:can|could|would) you\b|\bdo you know\b", " "),
    (r"\bi (?:would like|want|need) to know\b|\bgo about\b|\bwhich one\b", " "),
    (r"\bis there (?:a|any) way to\b|\bis it possible to\b", " how to "),
)

_CONTRACTIONS: tuple[tuple[str, str], ...] = (
    (r"\bcan't\b|\bcannot\b", "can not"), (r"\bwon't\b", "will not"), (r"\bshan't\b", "shall not"),
    (r"n't\b", " not"), (r"(\d)'s\b", r"\1s"),
    (r"\b(who|what|where|when|why|how|it|he|she|that|there|here)'s\b", r"\1 is"), (r"'s\b", ""),
    (r"'re\b", " are"), (r"'ll\b", " will"),
    (r"'ve\b", " have"), (r"'d\b", " would"), (r"'m\b", " am"),
)

_NO_STEM = frozenset("news series species physics mathematics economics politics always perhaps".split())

_TOKEN = re.compile(r"\d+(?:\.\d+)*(?:[a-z]+|%)?|[a-z]+")
_SIGNATURE_TOKEN = re.compile(r"\d+(?:\.\d+)*(?:[a-z]+|%)?|[-+*/=<>^(){}\[\];`|&~\\]")
_NUMERIC_UNITS = r"(?:gb|mb|tb|kb|b|k|m|bit|bits|bn)"


def _stem(word: str) -> str:
    """A deliberately light stemmer: plural, -ing/-ed, final e. Predictable beats clever here."""
    if len(word) <= 3 or not word.isalpha() or word in _NO_STEM:
        return word
    stem = word
    if stem.endswith("ies") and len(stem) > 4:
        stem = stem[:-3] + "y"
    elif stem.endswith("sses"):
        stem = stem[:-2]
    elif re.search(r"(?:x|z|ch|sh)es$", stem):
        stem = stem[:-2]
    elif stem.endswith("s") and not stem.endswith(("ss", "us", "is")):
        stem = stem[:-1]
    # A vowel must remain ("string" is not "str" + ing); "-eed" words (need, speed) keep their ending.
    if stem.endswith("ied") and len(stem) >= 5:
        stem = stem[:-3] + "y"
    elif stem.endswith("ing") and len(stem) >= 6 and _has_vowel(stem[:-3]):
        stem = _undouble(stem[:-3])
    elif stem.endswith("ed") and not stem.endswith("eed") and len(stem) >= 5 and _has_vowel(stem[:-2]):
        stem = _undouble(stem[:-2])
    if stem.endswith("e") and len(stem) > 3:
        stem = stem[:-1]  # make/making, file/files -> one stem
    return stem


def _has_vowel(text: str) -> bool:
    return any(ch in "aeiouy" for ch in text)


def _undouble(stem: str) -> str:
    # running -> run, stopped -> stop; but call, miss, buzz keep their double letter.
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "aeiouslzf":
        return stem[:-1]
    return stem


def _build_synonyms(groups: Iterable[Iterable[str]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for group in groups:
        words = list(group)
        canonical = _stem(words[0])
        for word in words:
            table.setdefault(word, canonical)
            table.setdefault(_stem(word), canonical)
    return table


_SYNONYMS = _build_synonyms(_SYNONYM_GROUPS)


def _canonical(word: str) -> str:
    return _SYNONYMS.get(word) or _SYNONYMS.get(_stem(word)) or _stem(word)


_CRITICAL = frozenset(_canonical(word) for word in _DIRECTION_WORDS)


# --- analysis -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Analysis:
    numbers: Counter[str]
    articles: int
    negated: bool
    critical: frozenset[str]
    question_words: frozenset[str]
    tense: str
    followers: dict[str, frozenset[str]]
    signature: tuple[str, ...]
    letters: frozenset[str]
    content: frozenset[str]


def _prepare(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    # Before lower-casing: "US" is the country, "us" the pronoun.
    text = re.sub(r"\bUSA?\b", " usa ", text)
    text = text.lower()
    for pattern, replacement in _CONTRACTIONS:
        text = re.sub(pattern, replacement, text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(\d)\s*(?:percent|per cent)\b", r"\1%", text)
    text = re.sub(r"(\d)\s+(million|billion|trillion)\b", lambda m: m.group(1) + _BIG_SCALES[m.group(2)], text)
    text = re.sub(rf"(\d)\s+({_NUMERIC_UNITS})\b", r"\1\2", text)  # "24 GB" == "24GB"
    text = re.sub(r"([a-z])(\d)", r"\1 \2", text)  # "llama3" == "llama 3", "gpt4" == "gpt 4"
    for pattern, replacement in _PHRASES:
        text = re.sub(pattern, replacement, text)
    return text


def _numeric(token: str) -> str:
    match = re.fullmatch(r"(\d+)", token)
    return str(int(match.group(1))) if match else token


def _fold_numbers(tokens: list[str]) -> tuple[list[str], Counter[str]]:
    """Replace runs of written numbers by one numeric token; collect all numeric tokens."""
    out: list[str] = []
    numbers: Counter[str] = Counter()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in _WRITTEN_NUMBERS or token in _SCALES:
            total, current, j = 0, 0, i
            while j < len(tokens):
                word = tokens[j]
                if word in _WRITTEN_NUMBERS:
                    current += _WRITTEN_NUMBERS[word]
                elif word in _SCALES:
                    current = max(current, 1) * _SCALES[word]
                    if _SCALES[word] == 1000:
                        total, current = total + current, 0
                elif word == "and" and j + 1 < len(tokens) and tokens[j + 1] in _WRITTEN_NUMBERS:
                    pass  # "one hundred and five"
                else:
                    break
                j += 1
            value = str(total + current)
            if j < len(tokens) and tokens[j] in _BIG_SCALES:
                value += _BIG_SCALES[tokens[j]]
                j += 1
            out.append(value)
            numbers[value] += 1
            i = j
            continue
        if token in _ORDINALS:
            token = _ORDINALS[token]
        if token[0].isdigit():
            token = _numeric(token)
            numbers[token] += 1
        out.append(token)
        i += 1
    return out, numbers


def _tense(tokens: list[str]) -> str:
    if any(t in _PAST for t in tokens):
        return "past"
    if any(t in _FUTURE for t in tokens):
        return "future"
    if any(t in _PRESENT for t in tokens):
        return "present"
    return ""  # no auxiliary: "Who painted X?" agrees with any tense


def _signature(prepared: str) -> tuple[str, ...]:
    """Numbers and operator symbols in order; empty when the text has no operator at all."""
    out: list[str] = []
    for match in _SIGNATURE_TOKEN.finditer(prepared):
        token = match.group()
        # A hyphen inside a word ("sci-fi", "gpt-4", "fine-tune") is spelling, not minus.
        if token == "-" and match.start() > 0 and prepared[match.start() - 1].isalpha():
            continue
        out.append(_numeric(token) if token[0].isdigit() else token)
    return tuple(out) if any(t in _SYMBOLS for t in out) else ()


def _analyze(text: str) -> _Analysis:
    prepared = _prepare(text)
    tokens, numbers = _fold_numbers(_TOKEN.findall(prepared))
    articles = sum(1 for t in tokens if t in ("a", "an"))
    negated = any(t in _NEGATIONS for t in tokens)
    words = [t for t in tokens if not t[0].isdigit()]
    question_words = frozenset(t for t in words if t in _QUESTION_WORDS)
    meaningful = [t for t in words if t not in _STOP_WORDS and t not in _FILLER_WORDS
                  and t not in _NEGATIONS and t not in _QUESTION_WORDS]
    canon = [_canonical(t) for t in meaningful]
    critical = frozenset(c for c in canon if c in _CRITICAL)
    followers: dict[str, set[str]] = {}
    for i, token in enumerate(tokens):
        if token in _ORDERED_PREPOSITIONS:
            for nxt in tokens[i + 1:]:
                if nxt in _ORDERED_PREPOSITIONS:
                    break  # "way to get from A to B": "to" has no object of its own here
                if nxt[0].isdigit() or (nxt not in _STOP_WORDS and nxt not in _FILLER_WORDS):
                    followers.setdefault(token, set()).add(nxt if nxt[0].isdigit() else _canonical(nxt))
                    break
    # Single letters are pronouns or articles in prose but names in code ("f(a)" vs "f(b)").
    letters = frozenset(t for t in words if len(t) == 1)
    return _Analysis(numbers, articles, negated, critical, question_words, _tense(tokens),
                     {k: frozenset(v) for k, v in followers.items()}, _signature(prepared), letters,
                     frozenset(canon))


def _direction_swap(a: _Analysis, b: _Analysis) -> str | None:
    """A word that is a destination on one side and an origin on the other ("to Paris" vs "from Paris")."""
    def roles(side: _Analysis) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for prep in ("to", "into", "onto", "towards", "from"):
            for word in side.followers.get(prep, frozenset()):
                out.setdefault(word, set()).add("origin" if prep == "from" else "destination")
        return out

    roles_a, roles_b = roles(a), roles(b)
    for word in sorted(roles_a.keys() & roles_b.keys()):
        if roles_a[word] != roles_b[word]:
            return word
    return None


def _numbers_match(a: _Analysis, b: _Analysis) -> bool:
    only_a, only_b = a.numbers - b.numbers, b.numbers - a.numbers
    if not only_a and not only_b:
        return True
    # "one egg" == "an egg": an unmatched 1 may stand for the other side's article.
    if not only_b and set(only_a) == {"1"}:
        return b.articles >= only_a["1"]
    if not only_a and set(only_b) == {"1"}:
        return a.articles >= only_b["1"]
    return False


def _fmt(words: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(words)) + "}"


def check_match(query: str, candidate: str) -> MatchCheck:
    """Decide whether `candidate`'s cached answer may be served for `query` (pure, no model)."""
    a, b = _analyze(query), _analyze(candidate)
    if not _numbers_match(a, b):
        return MatchCheck(False, f"numbers differ: {_fmt(a.numbers)} vs {_fmt(b.numbers)}")
    if a.negated != b.negated:
        return MatchCheck(False, "negation differs")
    if a.critical != b.critical:
        return MatchCheck(False, f"direction/quantity words differ: {_fmt(a.critical - b.critical)} "
                                 f"vs {_fmt(b.critical - a.critical)}")
    if a.question_words != b.question_words:
        return MatchCheck(False, f"question words differ: {_fmt(a.question_words)} vs {_fmt(b.question_words)}")
    if a.tense and b.tense and a.tense != b.tense:
        return MatchCheck(False, f"tense differs: {a.tense} vs {b.tense}")
    if (a.signature or b.signature) and (a.signature != b.signature or a.letters != b.letters):
        return MatchCheck(False, f"code/math differs: {' '.join(a.signature)} vs {' '.join(b.signature)}")
    swapped = _direction_swap(a, b)
    if swapped:
        return MatchCheck(False, f"direction differs: '{swapped}' is a destination on one side, an origin on the other")
    for prep in _ORDERED_PREPOSITIONS:
        if prep in a.followers and prep in b.followers and a.followers[prep] != b.followers[prep]:
            return MatchCheck(False, f"order differs around '{prep}': {_fmt(a.followers[prep])} "
                                     f"vs {_fmt(b.followers[prep])}")
    if a.content != b.content:
        return MatchCheck(False, f"content words differ: {_fmt(a.content - b.content)} "
                                 f"vs {_fmt(b.content - a.content)}")
    return MatchCheck(True, "same numbers, negation, direction and content words")
