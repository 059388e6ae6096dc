"""Word lists and character classes used to classify vocabulary tokens.

The function-word list is the closed-class English vocabulary (determiners, pronouns,
prepositions, conjunctions, auxiliaries, particles) used by the FC router. Tokens are
matched after stripping whitespace / space markers and lower-casing.
"""

from __future__ import annotations

import unicodedata

DETERMINERS = [
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "my",
    "your",
    "his",
    "her",
    "its",
    "our",
    "their",
    "some",
    "any",
    "no",
    "every",
    "each",
    "either",
    "neither",
    "all",
    "both",
    "half",
    "several",
    "many",
    "much",
    "more",
    "most",
    "few",
    "fewer",
    "less",
    "least",
    "other",
    "another",
    "such",
    "what",
    "which",
    "whose",
]

PRONOUNS = [
    "i",
    "me",
    "you",
    "he",
    "him",
    "she",
    "it",
    "we",
    "us",
    "they",
    "them",
    "myself",
    "yourself",
    "himself",
    "herself",
    "itself",
    "ourselves",
    "yourselves",
    "themselves",
    "mine",
    "yours",
    "hers",
    "ours",
    "theirs",
    "who",
    "whom",
    "whoever",
    "whatever",
    "whichever",
    "someone",
    "somebody",
    "something",
    "anyone",
    "anybody",
    "anything",
    "everyone",
    "everybody",
    "everything",
    "nobody",
    "nothing",
    "one",
    "ones",
]

PREPOSITIONS = [
    "of",
    "in",
    "on",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "to",
    "from",
    "up",
    "down",
    "out",
    "off",
    "over",
    "under",
    "again",
    "further",
    "near",
    "onto",
    "upon",
    "within",
    "without",
    "along",
    "across",
    "behind",
    "beyond",
    "toward",
    "towards",
    "around",
    "among",
    "amongst",
    "via",
    "per",
    "than",
    "like",
    "since",
    "until",
    "till",
    "despite",
    "throughout",
]

CONJUNCTIONS = [
    "and",
    "or",
    "but",
    "nor",
    "so",
    "yet",
    "if",
    "because",
    "although",
    "though",
    "while",
    "whereas",
    "unless",
    "whether",
    "once",
    "as",
    "when",
    "whenever",
    "where",
    "wherever",
    "then",
]

AUXILIARIES = [
    "am",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "having",
    "do",
    "does",
    "did",
    "doing",
    "will",
    "would",
    "shall",
    "should",
    "can",
    "could",
    "may",
    "might",
    "must",
    "ought",
    "'s",
    "'re",
    "'ve",
    "'d",
    "'ll",
    "'m",
    "n't",
]

PARTICLES = [
    "not",
    "no",
    "yes",
    "there",
    "here",
    "how",
    "why",
    "too",
    "very",
    "just",
    "also",
    "only",
    "even",
]

FUNCTION_WORDS: frozenset[str] = frozenset(
    DETERMINERS + PRONOUNS + PREPOSITIONS + CONJUNCTIONS + AUXILIARIES + PARTICLES
)

#: Space markers used by byte-level BPE (``Ġ``) and SentencePiece (``▁``) vocabularies.
SPACE_MARKERS = ("Ġ", "▁")

#: Markdown / formatting markers treated as punctuation even when written with letters.
MARKDOWN_MARKERS: frozenset[str] = frozenset({"**", "__", "##", "###", "####", "```", "---"})


def is_punctuation_text(text: str) -> bool:
    """True for whitespace-only text or text made only of punctuation and symbol characters."""
    stripped = text.strip()
    if not stripped:
        return True
    if stripped in MARKDOWN_MARKERS:
        return True
    return all(unicodedata.category(ch)[0] in "PS" for ch in stripped)


def normalise_word(text: str) -> str:
    """Strip whitespace and space markers and lower-case (how tokens are matched to words)."""
    for marker in SPACE_MARKERS:
        text = text.replace(marker, " ")
    return text.strip().lower()


def is_function_word_text(text: str) -> bool:
    """True when the token text is one English function word."""
    return normalise_word(text) in FUNCTION_WORDS
