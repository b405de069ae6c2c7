"""Offline noun-phrase spotting for free-form captions.

The official demo tags captions with NLTK (``NP: {<DT>?<JJ.*>*<NN.*>+}``), which needs
model downloads at run time. This is a small rule-based stand-in with no data files:
a caption is cut at words that cannot sit inside a noun phrase (prepositions,
conjunctions, pronouns, verbs, adverbs, punctuation) and each remaining run of words,
which keeps a leading article as the official grammar does, is a phrase. It finds the
phrases of typical grounding captions ("a man riding a horse next to a dog" ->
"a man", "a horse", "a dog"); for full control pass phrases separated by "." or
explicit character spans.
"""

from __future__ import annotations

import re

__all__ = ["find_noun_phrases"]

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")

_DETERMINERS = frozenset("a an the this that these those each every another some any no".split())
_BREAKERS = frozenset(
    """
    about above across after against along among around as at before behind below beneath beside besides between
    beyond by down during except for from in inside into like near next of off on onto out outside over past per
    since than through throughout till to toward towards under underneath until up upon via with within without
    and or but nor so yet while whereas because although though if when where whereas which who whom whose what
    i me my mine myself you your yours he him his she her hers it its itself we us our ours they them their theirs
    is are was were be been being am has have had having do does did done can could will would shall should may
    might must not very too also just only then there here how why all both either neither
    left right top bottom front back middle center centre
    play plays sit sits stand stands hold holds eat eats run runs walk walks ride rides wear wears look looks
    lie lies lay lays jump jumps swim swims carry carries watch watches read reads drink drinks
    throw throws catch catches sleep sleeps show shows use uses get gets go goes make makes take takes
    """.split()
)
# Words ending in "-ing" / "-ed" that are usually nouns or adjectives, not verbs.
_ING_NOUNS = frozenset(
    """awning building ceiling clothing painting thing something nothing anything everything king ring wing string
    spring swing sling railing evening morning wedding pudding icing frosting topping stuffing sibling ring earring
    dumpling bedding lighting parking housing ceiling""".split()
)
_ED_WORDS = frozenset("bed red shed sled seed weed reed hundred sacred naked wicked ragged".split())


def _is_breaker(word: str) -> bool:
    w = word.lower()
    if not w[0].isalnum():
        return True
    if w in _BREAKERS:
        return True
    if w.endswith("ly") and len(w) > 4 and w not in {"family", "belly", "jelly", "lily", "fly", "butterfly"}:
        return True
    if w.endswith("ing") and len(w) > 4 and w not in _ING_NOUNS:
        return True
    if w.endswith("ed") and len(w) > 4 and w not in _ED_WORDS:
        return True
    return False


def find_noun_phrases(caption: str) -> list[tuple[str, tuple[int, int]]]:
    """Noun phrases of ``caption`` with their ``(start, end)`` character spans.

    A run of non-breaking words becomes one phrase; articles inside a run start a new
    phrase ("the cat the dog" -> two phrases). Runs made only of articles or digits
    are dropped.
    """
    phrases: list[tuple[str, tuple[int, int]]] = []
    run: list[re.Match[str]] = []

    def close() -> None:
        words = [m for m in run if not m.group().isdigit()]
        if words and not all(m.group().lower() in _DETERMINERS for m in words):
            start, end = words[0].start(), words[-1].end()
            phrases.append((caption[start:end], (start, end)))
        run.clear()

    for m in _WORD.finditer(caption):
        word = m.group()
        if _is_breaker(word):
            close()
        elif word.lower() in _DETERMINERS and run:
            close()
            run.append(m)
        else:
            run.append(m)
    close()
    return phrases
