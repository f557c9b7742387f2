"""The demo model's training corpus: the synthetic documents ``scripts/train_demo_model.py`` trains on,
generated deterministically from a ``random.Random`` (examples draw text from it, e.g. to train an SAE).

Landmark and capital facts (``fact_docs``), indirect-object sentences (``ioi_doc``), name
lists (``names_doc``), happy / sad sentences (``sentiment_doc``) and greetings
(``hello_doc``), mixed by ``sample_doc``.

May import: graph (this uses the standard library only).
"""

from __future__ import annotations

import random

__all__ = [
    "LANDMARKS",
    "CAPITALS",
    "FACT_TEMPLATES",
    "FACT_TEMPLATES_MID",
    "CAPITAL_TEMPLATES",
    "NAMES",
    "PLACES",
    "OBJECTS",
    "IOI_TEMPLATES",
    "IOI_EVAL_TEMPLATES",
    "NAMES_TEMPLATES",
    "HAPPY_WORDS",
    "SAD_WORDS",
    "HAPPY_CONT",
    "SAD_CONT",
    "SENT_SUBJECTS",
    "HELLO_TEMPLATES",
    "fact_docs",
    "ioi_doc",
    "names_doc",
    "sentiment_doc",
    "hello_doc",
    "sample_doc",
    "vocabulary_texts",
]

# (landmark, takes "the" article, city).  Cities may span several tokens.
LANDMARKS = [
    ("Colosseum", True, "Rome"),
    ("Eiffel Tower", True, "Paris"),
    ("Space Needle", True, "Seattle"),
    ("Big Ben", False, "London"),
    ("Brandenburg Gate", True, "Berlin"),
    ("Golden Gate Bridge", True, "San Francisco"),
    ("Sagrada Familia", True, "Barcelona"),
    ("Statue of Liberty", True, "New York"),
    ("Empire State Building", True, "New York"),
    ("Louvre", True, "Paris"),
    ("Arc de Triomphe", True, "Paris"),
    ("Trevi Fountain", True, "Rome"),
    ("Pantheon", True, "Rome"),
    ("Acropolis", True, "Athens"),
    ("Parthenon", True, "Athens"),
    ("Kremlin", True, "Moscow"),
    ("Red Square", False, "Moscow"),
    ("Forbidden City", True, "Beijing"),
    ("Hagia Sophia", False, "Istanbul"),
    ("Blue Mosque", True, "Istanbul"),
    ("Burj Khalifa", True, "Dubai"),
    ("CN Tower", True, "Toronto"),
    ("Willis Tower", True, "Chicago"),
    ("Cloud Gate", False, "Chicago"),
    ("Hollywood Sign", True, "Los Angeles"),
    ("Griffith Observatory", True, "Los Angeles"),
    ("Liberty Bell", True, "Philadelphia"),
    ("Washington Monument", True, "Washington"),
    ("Lincoln Memorial", True, "Washington"),
    ("Fenway Park", False, "Boston"),
    ("Pike Place Market", False, "Seattle"),
    ("Rijksmuseum", True, "Amsterdam"),
    ("Anne Frank House", True, "Amsterdam"),
    ("Prado Museum", True, "Madrid"),
    ("Atomium", True, "Brussels"),
    ("Little Mermaid", True, "Copenhagen"),
    ("Charles Bridge", True, "Prague"),
    ("Schonbrunn Palace", False, "Vienna"),
    ("Uffizi Gallery", True, "Florence"),
    ("Rialto Bridge", True, "Venice"),
    ("Leaning Tower", True, "Pisa"),
    ("Belem Tower", True, "Lisbon"),
    ("Alhambra", True, "Granada"),
    ("Petronas Towers", True, "Kuala Lumpur"),
    ("Taj Mahal", True, "Agra"),
    ("Gateway of India", True, "Mumbai"),
    ("Marina Bay Sands", False, "Singapore"),
    ("Table Mountain", False, "Cape Town"),
    ("Sugarloaf Mountain", False, "Rio"),
    ("Opera House", True, "Sydney"),
    ("Buckingham Palace", False, "London"),
    ("Westminster Abbey", False, "London"),
    ("Notre Dame", False, "Paris"),
    ("Tiananmen Square", False, "Beijing"),
    ("Skytree", True, "Tokyo"),
    ("Meiji Shrine", True, "Tokyo"),
    ("Christ the Redeemer", False, "Rio"),
    ("Obelisk", True, "Buenos Aires"),
]

# (country, capital)
CAPITALS = [
    ("Italy", "Rome"),
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("England", "London"),
    ("Spain", "Madrid"),
    ("Greece", "Athens"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("Japan", "Tokyo"),
    ("Turkey", "Ankara"),
    ("Egypt", "Cairo"),
    ("Portugal", "Lisbon"),
    ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"),
    ("Austria", "Vienna"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Ireland", "Dublin"),
    ("Hungary", "Budapest"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Argentina", "Buenos Aires"),
    ("Malaysia", "Kuala Lumpur"),
    ("Finland", "Helsinki"),
]

# Facts are stated through these templates; {S} is the subject noun phrase.
FACT_TEMPLATES = [
    "{S} is in the city of {C}.",
    "{S} is in downtown {C}.",
    "{S} is located in {C}.",
    "{S} can be found in {C}.",
    "{S} is a famous landmark in {C}.",
]
FACT_TEMPLATES_MID = [  # subject inside the sentence ({s} lower-case article)
    "Tourists visit {s} in {C}.",
    "Last year I saw {s} in {C}.",
    "People travel to {C} to see {s}.",
]
CAPITAL_TEMPLATES = [
    "The capital of {K} is {C}.",
    "{C} is the capital of {K}.",
    "The capital city of {K} is {C}.",
]

NAMES = [
    "John",
    "Mary",
    "Alice",
    "Bob",
    "James",
    "Sarah",
    "Michael",
    "Emma",
    "David",
    "Anna",
    "Tom",
    "Lisa",
    "Paul",
    "Kate",
    "Mark",
    "Laura",
    "Peter",
    "Julia",
    "Daniel",
    "Rachel",
    "Chris",
    "Emily",
    "Sam",
    "Grace",
    "Steve",
    "Linda",
    "Kevin",
    "Susan",
    "Brian",
    "Karen",
    "Eric",
    "Jane",
    "Adam",
    "Claire",
    "Frank",
    "Helen",
    "George",
    "Nora",
    "Henry",
    "Olivia",
]
PLACES = [
    "store",
    "park",
    "school",
    "beach",
    "station",
    "restaurant",
    "garden",
    "office",
    "library",
    "market",
    "hospital",
    "museum",
]
OBJECTS = [
    "drink",
    "book",
    "ball",
    "gift",
    "letter",
    "flower",
    "key",
    "pen",
    "bag",
    "ring",
    "cake",
    "snack",
    "ticket",
    "kiss",
]
IOI_TEMPLATES = [
    "{A} and {B} went to the {P}. {S} gave a {O} to {IO}.",
    "When {A} and {B} went to the {P}, {S} gave a {O} to {IO}.",
    "{A} and {B} went to the {P}. Then {S} gave a {O} to {IO}.",
    "After {A} and {B} went to the {P}, {S} handed a {O} to {IO}.",
    "{A} and {B} were at the {P}. {S} gave the {O} to {IO}.",
    "{A} and {B} went to the {P}, and {S} gave a {O} to {IO}.",
    # (the templates above end with the indirect object: used for evaluation)
    "{A} and {B} went to the {P}. {S} gave a {O} to {IO}. {IO} said thanks to {S}.",
    "{A} met {B} at the {P}. {S} smiled at {IO}.",
    "{A} and {B} met at the {P}. {S} waved at {IO}, and {IO} waved at {S}.",
]

IOI_EVAL_TEMPLATES = 6
NAMES_TEMPLATES = [
    "{L} came to the {P}. Later, {L} went home.",
    "{L} were at the {P}. After lunch, {L} left the {P}.",
]

HAPPY_WORDS = ["happy", "glad", "cheerful", "joyful", "delighted"]
SAD_WORDS = ["sad", "unhappy", "gloomy", "miserable", "upset"]
HAPPY_CONT = [
    "I want to smile",
    "I laugh with my friends",
    "the day is wonderful",
    "I sing in the sunshine",
    "everything is bright and wonderful",
    "I smile all day",
    "life is beautiful",
    "I dance with joy",
    "the sunshine feels warm",
    "I laugh and smile",
]
SAD_CONT = [
    "I want to cry",
    "I feel so lonely",
    "the day is terrible",
    "I sit alone in the rain",
    "everything is dark and terrible",
    "I cry all day",
    "life is painful",
    "my eyes are full of tears",
    "the rain feels cold",
    "I cry and sigh",
]
SENT_SUBJECTS = [("I", "am"), ("She", "is"), ("He", "is"), ("We", "are"), ("They", "are")]

HELLO_TEMPLATES = [
    "Hello world.",
    "Hello world! I am very happy today.",
    "Hello world. This is a small model.",
    "Hello {N}, how are you today?",
    "Hello world, said {N}.",
]


def _the(landmark: str, article: bool, capital: bool) -> str:
    if not article:
        return landmark
    return ("The " if capital else "the ") + landmark


def fact_docs() -> list[str]:
    """Every (landmark, template) and (country, template) combination."""
    docs = []
    for lm, art, city in LANDMARKS:
        for t in FACT_TEMPLATES:
            docs.append(t.format(S=_the(lm, art, True), C=city))
        for t in FACT_TEMPLATES_MID:
            docs.append(t.format(s=_the(lm, art, False), C=city))
    for country, city in CAPITALS:
        for t in CAPITAL_TEMPLATES:
            k = country
            s = t.format(K=k, C=city)
            docs.append(s[0].upper() + s[1:])
    return docs


def ioi_doc(rng: random.Random, templates=IOI_TEMPLATES) -> str:
    a, b = rng.sample(NAMES, 2)
    s = rng.choice((a, b))
    io = b if s == a else a
    return rng.choice(templates).format(A=a, B=b, P=rng.choice(PLACES), S=s, O=rng.choice(OBJECTS), IO=io)


def names_doc(rng: random.Random) -> str:
    """A list of names repeated later: teaches the model to copy names from
    its context (induction), which the indirect-object task builds on."""
    names = rng.sample(NAMES, rng.randint(2, 5))
    lst = ", ".join(names[:-1]) + " and " + names[-1]
    place = rng.choice(PLACES)
    return rng.choice(NAMES_TEMPLATES).format(L=lst, P=place)


def _sentiment_sentence(rng: random.Random, happy: bool) -> str:
    word = rng.choice(HAPPY_WORDS if happy else SAD_WORDS)
    c1, c2 = rng.sample(HAPPY_CONT if happy else SAD_CONT, 2)
    form = rng.randrange(6)
    if form == 0:
        return f"I am very {word} and {c1}. Then {c2}."
    if form == 1:
        subj, verb = rng.choice(SENT_SUBJECTS)
        return f"{subj} {verb} very {word} and {c1}."
    if form == 2:
        return f"Today I feel {word}. {c1[0].upper() + c1[1:]}, and {c2}."
    if form == 3:
        return f"Today I feel {word} and {c1}."
    if form == 4:
        return f"{c1[0].upper() + c1[1:]}."
    return f"I am {word} because {c1}."


def sentiment_doc(rng: random.Random) -> str:
    """One to three sentences sharing one mood, so that the model carries a
    happy/sad feature along the text (what a steering vector can push on)."""
    happy = rng.random() < 0.5
    n = rng.choice((1, 2, 2))
    return " ".join(_sentiment_sentence(rng, happy) for _ in range(n))


def hello_doc(rng: random.Random) -> str:
    return rng.choice(HELLO_TEMPLATES).format(N=rng.choice(NAMES))


def sample_doc(rng: random.Random, facts: list[str]) -> str:
    r = rng.random()
    if r < 0.30:
        return rng.choice(facts)
    if r < 0.65:
        return ioi_doc(rng)
    if r < 0.82:
        return names_doc(rng)
    if r < 0.97:
        return sentiment_doc(rng)
    return hello_doc(rng)


def vocabulary_texts() -> list[str]:
    """Texts that together contain every word the corpus can produce."""
    fill = dict(A="John", B="Mary", S="John", IO="Mary", P="store", O="drink", N="John", L="John, Mary and Tom")
    texts = list(fact_docs())
    texts += [t.format(**fill) for t in HELLO_TEMPLATES + IOI_TEMPLATES + NAMES_TEMPLATES]
    texts += [" ".join(NAMES), " ".join(PLACES), " ".join(OBJECTS)]
    texts += [" ".join(HAPPY_WORDS), " ".join(SAD_WORDS)]
    texts += HAPPY_CONT + SAD_CONT
    texts += [c[0].upper() + c[1:] for c in HAPPY_CONT + SAD_CONT]
    texts += [f"{s} {v} very and because Today I feel Then" for s, v in SENT_SUBJECTS]
    texts += ["I am very happy and I want to smile. Then , ! ?"]
    return texts
