"""Probe tasks: presets from assets/tasks.json, the needle builders behind them, and the assembly
of a whole prompt sized to a target length in the model's own tokens.

A `ProbeSpec` (task, length, depth, seed, overrides) rebuilds the same `ProbeInstance` every time.
"""
from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from engines.config.kinds import Kind, Setting, entries, lookup, register
from engines.context.transforms import document_order, orders_documents
from engines.decoding.generation import format_prompt, raw_start
from engines.probes.benchmarks import DIRECT, SIZED, settings_of
from engines.probes.benchmarks.ruler import Sample, cwe_vocabulary
from engines.probes.haystack import (
    ASSETS,
    HaystackError,
    Piece,
    Source,
    Span,
    document,
    kv_pair,
    largest_fitting,
    multidoc_set,
    random_uuid,
    render,
    source,
    split_sentences,
)
from engines.probes.reference_data import english_words
from engines.probes.retrieval import ranking

LENGTH_TOLERANCE = 0.01


@dataclass(frozen=True)
class TaskSpec(Kind):
    """A preset (registered as a kind of the "task" family): which builder makes the needles, on which
    haystack, asked and scored how. Its settings are the builder's, with the preset's values as defaults."""

    family: ClassVar[str] = "task"
    name: str = field()  # field(): the Kind base's class defaults are not this dataclass's defaults
    builder: str = field()
    haystack: str = field()
    scorer: str = field()
    description: str = field()
    max_new_tokens: int = 32
    params: dict = field(default_factory=dict)
    differs: str = ""  # how a lab preset differs from its benchmark-faithful twin, or what a faithful one changes

    @property
    def settings(self) -> tuple[Setting, ...]:
        declared = BUILDERS[self.builder][1] if self.builder in BUILDERS else settings_of(self.builder)
        return tuple(dataclasses.replace(s, default=self.params.get(s.name, s.default)) for s in declared)


@dataclass(frozen=True)
class ProbeSpec:
    """What the user asked for; enough to rebuild the probe exactly. `params` override the preset's."""

    task: str
    length: int
    depth: float = 50.0
    seed: int = 1
    haystack: str | None = None
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.length, int) or self.length < 1:
            raise HaystackError("Length must be a whole number of tokens, at least 1.")
        if not isinstance(self.depth, (int, float)) or not 0 <= self.depth <= 100:
            raise HaystackError(f"Depth {self.depth} is outside 0..100: give a percentage of the haystack.")
        if not isinstance(self.seed, int):
            raise HaystackError("Seed must be a whole number.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProbeSpec":
        return cls(**data)


@dataclass(frozen=True)
class Plan:
    """What a builder returns: the pieces to place, the question and the expected answers."""

    pieces: list[Piece]
    question: str
    expected: tuple[str, ...]
    answer_prefix: str = ""
    intro: str = ""
    logprob_target: str = ""
    logprob_lead: str = ""  # the reply's usual opening, fed before the scored target
    source: Source | None = None  # overrides the task's haystack (e.g. a haystack of distractors)
    sized_context: Callable[[int], str] | None = None  # contexts made whole from a size, not placed


@dataclass(frozen=True)
class ProbeInstance:
    """A built probe: the exact prompt, where its needles sit (characters and tokens), what to expect."""

    spec: ProbeSpec
    task: str
    prompt: str
    question: str
    answer_prefix: str
    expected: tuple[str, ...]
    scorer: str
    spans: tuple[dict, ...]
    prompt_tokens: int
    prompt_chars: int
    max_new_tokens: int
    logprob_target: str
    logprob_lead: str
    haystack: str

    @property
    def needle_token_spans(self) -> list[tuple[int, int]]:
        return [(s["token_start"], s["token_end"]) for s in self.spans if s["kind"] in ("needle", "gold")]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = self.spec.to_dict()
        return data


def load_tasks() -> dict[str, TaskSpec]:
    return entries("task")


def get_task(name: str) -> TaskSpec:
    return lookup("task", name)


@lru_cache(maxsize=1)
def key_words() -> tuple[str, ...]:
    """Plain words for RULER-style keys ("river-patient"), taken from the essays in assets/."""
    text = " ".join(p.read_text() for p in sorted((ASSETS / "essays").glob("*.txt")))
    return tuple(sorted({w for w in re.findall(r"[a-z]+", text) if 5 <= len(w) <= 9}))


def _word_key(rng: random.Random) -> str:
    return f"{rng.choice(key_words())}-{rng.choice(key_words())}"


def _spread(rng: random.Random, count: int, depth: float) -> list[float]:
    """`count` depths: the first at `depth`, the rest at seeded random depths."""
    return [depth] + [rng.uniform(0, 100) for _ in range(count - 1)]


# ---------------------------------------------------------------- builders (rng, params, depth) -> Plan

def build_passkey(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    key = str(rng.randint(1, 50000))
    return Plan([Piece(f"The pass key is {key}. Remember it. {key} is the pass key.", "needle", depth)],
                params.get("question", "What is the pass key? Answer with the number only."), (key,),
                intro="There is important information hidden in a lot of irrelevant text. "
                      "Find it and memorize it.", logprob_target=" " + key, logprob_lead="The pass key is")


def build_custom(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    missing = [k for k in ("needle", "question", "answer") if not str(params.get(k, "")).strip()]
    if missing:
        raise HaystackError(f"A custom needle needs {', '.join(missing)}: fill in the needle sentence, "
                            "the question about it and the expected answer.")
    answer = str(params["answer"]).strip()
    return Plan([Piece(str(params["needle"]).strip(), "needle", depth)], str(params["question"]).strip(),
                (answer,), logprob_target=answer)


def build_niah(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    """RULER NIAH: keys (words or UUIDs) with 7-digit numbers or UUIDs; some asked, others distract."""
    key_of = random_uuid if params.get("key_type") == "uuids" else _word_key
    values_are_uuids = params.get("value_type") == "uuids"
    value_of = random_uuid if values_are_uuids else (lambda r: str(r.randint(10**6, 10**7 - 1)))
    num_keys, num_values, num_queries = (int(params.get(k, 1)) for k in ("num_keys", "num_values", "num_queries"))
    if not 1 <= num_queries <= num_keys:
        raise HaystackError("num_queries must be between 1 and num_keys.")
    noun = "UUIDs" if values_are_uuids else "numbers"

    def needle(r: random.Random, key: str | None = None) -> str:
        return f"One of the special magic {noun} for {key or key_of(r)} is: {value_of(r)}."

    keys = [key_of(rng) for _ in range(num_keys)]
    asked = keys[:num_queries]
    depths = _spread(rng, num_keys * num_values, depth)
    pieces = [Piece(needle(rng, key), "needle" if key in asked else "distractor", depths.pop(0), key)
              for key in keys for _ in range(num_values)]
    expected = tuple(p.text.rsplit(": ", 1)[1].rstrip(".") for p in pieces if p.kind == "needle")
    many = len(expected) > 1
    what = noun if many else noun[:-1]
    question = (f"What {'are all the' if many else 'is the'} special magic {what} for {', '.join(asked)} "
                f"mentioned in the provided text? Answer with the {what} only.")
    distractors = None
    if params.get("haystack_of_distractors"):
        distractors = Source("distractors", lambda filler_rng: iter(lambda: needle(filler_rng), None))
    return Plan(pieces, question, expected, logprob_target=" " + ", ".join(expected), source=distractors,
                logprob_lead=f"The special magic {what} for {', '.join(asked)} {'are' if many else 'is'}")


def build_variable_tracking(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    """RULER vt: VAR A = 12345, VAR B = VAR A, ... placed forward from `depth`; other chains distract."""
    hops, chains = int(params.get("num_hops", 4)), int(params.get("num_chains", 1))
    names = rng.sample([f"{a}{b}{c}{d}{e}" for a, b, c, d, e in
                        (rng.sample("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 5) for _ in range(hops * chains * 3))], hops * chains)
    pieces, expected, value = [], (), ""
    for chain in range(chains):
        chain_value = str(rng.randint(10000, 99999))
        chain_names = names[chain * hops:(chain + 1) * hops]
        start = depth if chain == 0 else rng.uniform(0, 100)
        for hop, name in enumerate(chain_names):
            rhs = chain_value if hop == 0 else f"VAR {chain_names[hop - 1]}"
            at = start + (100 - start) * hop / hops
            pieces.append(Piece(f"VAR {name} = {rhs}.", "needle" if chain == 0 else "distractor", at, name))
        if chain == 0:
            expected, value = tuple(chain_names), chain_value
    return Plan(pieces, f"Find every variable that is assigned the value {value} in the text above, directly "
                        f"or through other variables. Answer with the variable names only.",
                expected, logprob_target=" " + ", ".join(expected),
                logprob_lead=f"The variables that hold the value {value} are")


def build_common_words(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    """RULER-style cwe: a numbered word list; the common words appear more often than any other word at
    every length (each other word is a distinct word, listed freq_uncommon times)."""
    num_common = int(params.get("num_common", 10))
    freq_common, freq_uncommon = int(params.get("freq_common", 30)), int(params.get("freq_uncommon", 3))
    words = distinct_words(rng.random())
    common = [next(words) for _ in range(num_common)]
    others: list[str] = []
    order_seed = rng.random()
    # a list of `length` tokens has about length/4 lines; short lists repeat the common words less,
    # but always more often than the other words
    scale = max(freq_uncommon + 1, min(freq_common, length // (4 * 4 * num_common)))

    def word_list(size: int) -> str:  # size = number of other-word lines
        while len(others) * freq_uncommon < size:
            others.append(next(words))
        listed = common * scale + [others[i // freq_uncommon] for i in range(size)]
        random.Random(order_seed).shuffle(listed)
        return "\n".join(f"{i + 1}. {w}" for i, w in enumerate(listed))

    return Plan([], f"What are the {num_common} most common words in the list above? "
                    "Answer with the words only, separated by commas.", tuple(common),
                logprob_target=" " + ", ".join(common), logprob_lead=f"The {num_common} most common words are",
                sized_context=word_list)


def distinct_words(seed: float) -> Iterator[str]:
    """Single words never repeated: wonderwords' lists in a seeded order, then english-words' web2 list."""
    pool = [w for w in cwe_vocabulary() if w.isalpha() and w.islower()]
    random.Random(seed).shuffle(pool)
    yield from pool
    seen = set(pool)
    more = [w for w in english_words() if w not in seen]
    random.Random(seed).shuffle(more)
    yield from more


def build_kv_retrieval(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    """Lost in the middle (b): a JSON object of UUID pairs; the asked pair sits at `depth`."""
    key, value = random_uuid(rng), random_uuid(rng)
    return Plan([Piece(kv_pair(key, value), "needle", depth, "asked pair")],
                f'Extract the value for the key "{key}" from the JSON object above. Answer with the value only.',
                (value,), intro="JSON data:", logprob_target=" " + value, logprob_lead=f'The value for the key "{key}" is')


def build_multidoc_qa(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    """Lost in the middle (a): one gold document among distractors, at `doc_index` or `depth`."""
    data = multidoc_set()
    item = data["questions"][rng.randrange(len(data["questions"]))]
    gold = next(d for d in data["documents"] if d["title"] == item["gold"])
    question = f"Question: {item['question']}"

    def others(filler_rng: random.Random) -> Iterator[str]:
        stream = (unit for unit in source("documents").units(filler_rng)
                  if not unit.startswith(f"(Title: {gold['title']})"))
        if params.get("negatives") == "hard":  # one round of the document set, the most like the question first
            pool: list[str] = []
            for unit in stream:
                if unit in pool:
                    break
                pool.append(unit)
            yield from (pool[i] for i in ranking(question, pool))
        yield from stream

    index = params.get("doc_index")
    return Plan([Piece(document(gold["title"], gold["text"]), "gold", depth, gold["title"],
                       None if index is None else int(index))],
                question, tuple(item["answers"]), answer_prefix="Answer:",
                intro="Answer the question using only the search results below; some of them are irrelevant.",
                logprob_target=" " + item["answers"][0], source=Source("documents", others, "\n\n", numbered=True))


def _conditional_key(rng: random.Random) -> str:
    key = random_uuid(rng)
    at = rng.randrange(len(key))
    return key[:at] + "*" + key[at + 1:]


def build_threading(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    """Needle threading on a UUID JSON object: single, multiple, conditional, threading, multi-threading."""
    mode = params.get("mode", "single")
    count, hops = int(params.get("num_needles", 1)), int(params.get("num_hops", 1))
    direction = params.get("direction", "forward")
    intro = "JSON data:"
    if mode in ("single", "multiple", "conditional"):
        keys = [(_conditional_key if mode == "conditional" else random_uuid)(rng) for _ in range(count)]
        values = [random_uuid(rng) for _ in keys]
        depths = _spread(rng, count, depth)
        pieces = [Piece(kv_pair(k, v), "needle", d, f"pair {i + 1}") for i, (k, v, d) in
                  enumerate(zip(keys, values, depths))]
        if mode == "single":
            question = f'What is the value of the key "{keys[0]}" in the JSON object above? Answer with the value only.'
        elif mode == "multiple":
            question = (f"What are the values of the keys {', '.join(json.dumps(k) for k in keys)} in the JSON "
                        "object above? Answer with the values only, separated by commas.")
        else:
            question = ('Find every key in the JSON object above that contains the character "*" and give its '
                        "value. Answer with the values only, separated by commas.")
        lead = f'The value of the key "{keys[0]}" is' if mode == "single" else "The values are"
        return Plan(pieces, question, tuple(values), intro=intro, logprob_target=" " + ", ".join(values),
                    logprob_lead=lead)
    threads = count if mode == "multi_threading" else 1
    pieces, starts, finals, chain_values = [], [], [], []
    for thread in range(threads):
        chain = [random_uuid(rng) for _ in range(hops + 1)]  # key_1 -> key_2 -> ... -> final value
        first = depth if thread == 0 else rng.uniform(0, 100)
        if direction == "forward":
            depths = [first + (100 - first) * h / hops for h in range(hops)]
        elif direction == "backward":
            depths = [first - first * h / hops for h in range(hops)]
        else:
            depths = [first] + [rng.uniform(0, 100) for _ in range(hops - 1)]
        pieces += [Piece(kv_pair(chain[h], chain[h + 1]), "needle", depths[h], f"thread {thread + 1} hop {h + 1}")
                   for h in range(hops)]
        starts.append(chain[0])
        finals.append(chain[-1])
        chain_values.append(chain[1:])
    if mode == "threading":
        question = (f'Start at the key "{starts[0]}". Its value is another key in the JSON object above; keep '
                    "following the values as keys until the value is no longer a key. What is that final value? "
                    "Answer with the value only.")
        return Plan(pieces, question, tuple(chain_values[0]), intro=intro, logprob_target=" " + finals[0],
                    logprob_lead="The final value is")
    question = (f"For each of the keys {', '.join(json.dumps(s) for s in starts)}: its value is another key in "
                "the JSON object above; keep following the values as keys until the value is no longer a key. "
                "What are the final values? Answer with the values only, separated by commas.")
    return Plan(pieces, question, tuple(finals), intro=intro, logprob_target=" " + ", ".join(finals),
                logprob_lead="The final values are")


def build_counting_stars(rng: random.Random, params: dict, depth: float, length: int) -> Plan:
    """Counting stars: N counts spread evenly through the haystack; one call gives a position curve."""
    count = int(params.get("num_counts", 8))
    counts = rng.sample(range(1, 100), count)
    pieces = [Piece(f"The little penguin counted {k} stars.", "needle", 100 * (i + 0.5) / count, f"count {i + 1}")
              for i, k in enumerate(counts)]
    return Plan(pieces, "The text mentions several times how many stars the little penguin counted. List every "
                        "count in the order it appears, separated by commas. Answer with the numbers only.",
                tuple(str(k) for k in counts), logprob_target=" " + ", ".join(str(k) for k in counts),
                logprob_lead="The counts are")


def count(name: str, default: int, meaning: str, high: int) -> Setting:
    return Setting(name, "int", default, meaning, 1, high)


# builder name -> (builder, its settings); a preset in assets/tasks.json names a builder and sets defaults
BUILDERS: dict[str, tuple[Callable[[random.Random, dict, float, int], Plan], tuple[Setting, ...]]] = {
    "passkey": (build_passkey, (
        Setting("question", "str", "What is the pass key? Answer with the number only.", "the question asked"),)),
    "custom": (build_custom, (
        Setting("needle", "str", "", "the sentence placed at the depth"),
        Setting("question", "str", "", "the question about it"),
        Setting("answer", "str", "", "the expected answer"))),
    "niah": (build_niah, (
        Setting("key_type", "str", "words", "keys: two plain words joined by '-', or UUIDs",
                choices=("words", "uuids")),
        Setting("value_type", "str", "numbers", "values: 7-digit numbers or UUIDs", choices=("numbers", "uuids")),
        count("num_keys", 1, "keys placed (the first num_queries are asked, the rest distract)", 100),
        count("num_values", 1, "values per key", 20),
        count("num_queries", 1, "keys asked about", 100),
        Setting("haystack_of_distractors", "int", 0, "1: the haystack is made of other needles", 0, 1))),
    "vt": (build_variable_tracking, (
        count("num_hops", 4, "assignments in the chain", 50),
        count("num_chains", 1, "chains (the others distract)", 20))),
    "cwe": (build_common_words, (
        count("num_common", 10, "common words asked for", 100),
        count("freq_common", 30, "repetitions of each common word (fewer in short lists)", 1000),
        count("freq_uncommon", 3, "repetitions of each other word", 100))),
    "kv_retrieval": (build_kv_retrieval, ()),
    "multidoc_qa": (build_multidoc_qa, (
        Setting("doc_index", "int", None, "put the gold document after this many documents; default by depth",
                0, 10_000),
        Setting("negatives", "str", "random", "the other documents: random, or hard (those most like the question "
                "by BM25 first)", choices=("random", "hard")))),
    "threading": (build_threading, (
        Setting("mode", "str", "single", "what is asked",
                choices=("single", "multiple", "conditional", "threading", "multi_threading")),
        count("num_needles", 1, "pairs (single/multiple/conditional) or threads (multi_threading)", 100),
        count("num_hops", 1, "hops per thread", 100),
        Setting("direction", "str", "forward", "where each hop sits after the last",
                choices=("forward", "backward", "random")))),
    "counting_stars": (build_counting_stars, (count("num_counts", 8, "counts placed evenly", 99),)),
}


def _register_presets() -> None:
    for preset in json.loads((ASSETS / "tasks.json").read_text())["tasks"]:
        if preset["builder"] not in {*BUILDERS, *SIZED, *DIRECT}:
            raise ValueError(f"Task '{preset['name']}' names an unknown builder; fix assets/tasks.json.")
        register(TaskSpec(**preset))


_register_presets()


# ---------------------------------------------------------------- assembly

class _Units:
    """A source's filler units with their token counts, drawn lazily from a seeded stream."""

    def __init__(self, tokenizer, src: Source, seed: int):
        self.tokenizer, self.src = tokenizer, src
        self.stream = src.units(random.Random(f"filler-{seed}"))
        self.texts: list[str] = []
        self.tokens: list[int] = []
        self.order: list[int] = []  # which drawn units fill the haystack, in order

    def ensure(self, count: int) -> None:
        while len(self.texts) < count:
            batch = [next(self.stream) for _ in range(max(64, count - len(self.texts)))]
            encoded = self.tokenizer([self.src.separator + t for t in batch], add_special_tokens=False).input_ids
            self.order += range(len(self.texts), len(self.texts) + len(batch))
            self.texts += batch
            self.tokens += [len(ids) for ids in encoded]

    def covering(self, budget: int) -> int:
        """How many units add up to about `budget` tokens."""
        count, total = 0, 0
        while total < budget:
            self.ensure(count + 1)
            total += self.tokens[count]
            count += 1
        return count


def _token_spans(tokenizer, prompt: str, spans: list[Span]) -> tuple[int, tuple[dict, ...]]:
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    placed = []
    for span in spans:
        inside = [i for i, (a, b) in enumerate(offsets) if b > span.start and a < span.end]
        placed.append({"kind": span.kind, "label": span.label, "char_start": span.start, "char_end": span.end,
                       "token_start": inside[0] if inside else 0, "token_end": inside[-1] + 1 if inside else 0})
    return len(offsets), tuple(placed)


def build_probe(tokenizer, spec: ProbeSpec, chat_template: bool = True, upload_text: str | None = None,
                max_tokens: int | None = None, transform=None) -> ProbeInstance:
    """Build the probe `spec` asks for, its whole prompt (after `transform`, a TransformSpec) within 1%
    of spec.length tokens; every copy of the context a transform makes has its pieces marked."""
    task = get_task(spec.task)
    if max_tokens is not None and spec.length > max_tokens:
        raise HaystackError(f"Length {spec.length} tokens is beyond what this model and memory allow here "
                            f"(at most {max_tokens}); choose a smaller length.")
    lookup("scorer", task.scorer)
    if task.builder in SIZED or task.builder in DIRECT:
        if transform is not None and transform.kind != "none":
            raise HaystackError(f"'{task.name}' keeps its benchmark's own template, so a context transform does not "
                                "apply; use the lab's own preset of the same task to transform it.")
        return build_reference(tokenizer, spec, task, chat_template)
    plan = BUILDERS[task.builder][0](random.Random(f"needles-{spec.seed}"), task.defaults() | task.typed(spec.params),
                                     float(spec.depth), spec.length)
    haystack_name = spec.haystack or task.haystack
    src = plan.source or source(haystack_name, upload_text)
    ordering = transform if orders_documents(transform) else None
    if ordering is not None:
        if not src.numbered:
            raise HaystackError(f"'{ordering.kind}' orders documents, and the '{src.name}' haystack has none; "
                                "choose a task whose haystack is documents (litm_qa) or the 'documents' "
                                "haystack.")
        transform = None  # applied to the documents, before they are numbered
    arrange = None if ordering is None else (lambda texts: document_order(ordering, texts, plan.question))

    def prompt_for(size: int) -> tuple[str, list[Span]]:
        if plan.sized_context is not None:
            body, spans = plan.sized_context(size), []
        else:
            units.ensure(size)
            chosen = units.order[:size]
            body, spans = render(src, [units.texts[i] for i in chosen], plan.pieces, [units.tokens[i] for i in chosen],
                                 arrange)
        head = plan.intro + "\n" if plan.intro else ""
        prompt = format_prompt(tokenizer, head + body, plan.question, chat_template, plan.answer_prefix, transform)
        placed, at = [], prompt.find(head + body)
        while at >= 0:  # each copy of the context (a transform may repeat it)
            offset = at + len(head)
            placed += [Span("haystack", src.name, offset, offset + len(body))] + [s.shifted(offset) for s in spans]
            at = prompt.find(head + body, at + len(head + body))
        if not placed:  # the transform rewrote the context: find the sentences of the haystack and pieces again
            placed = relocated(prompt, body, [Span("haystack", src.name, 0, len(body))] + spans)
        return prompt, placed

    def measure(size: int) -> int:
        return len(tokenizer(prompt_for(size)[0], add_special_tokens=False).input_ids)

    units = _Units(tokenizer, src, spec.seed)
    smallest = measure(1 if plan.sized_context else 0)
    if spec.length < smallest:
        raise HaystackError(f"Length {spec.length} is too short for '{task.name}': the template, question and "
                            f"needles alone take {smallest} tokens. Choose at least {smallest + 50}.")
    size = _best_size(measure, units, plan, spec.length, smallest)
    if plan.sized_context is None:
        _fine_tune(measure, units, size, spec.length)
    prompt, spans = prompt_for(size)
    prompt_tokens, token_spans = _token_spans(tokenizer, prompt, spans)
    return ProbeInstance(spec, task.name, prompt, plan.question, plan.answer_prefix, plan.expected, task.scorer,
                         token_spans, prompt_tokens, len(prompt), task.max_new_tokens, plan.logprob_target,
                         plan.logprob_lead, src.name)


def relocated(prompt: str, body: str, spans: list[Span]) -> list[Span]:
    """The spans of `body` found again in `prompt` after a transform rewrote it, each from its first sentence
    to its last, found one after another (by line, then sentence); a span whose sentences the rewrite lost
    is left out."""
    placed = []
    for span in spans:
        sentences = [s for line in body[span.start:span.end].splitlines() for s in split_sentences(line)]
        start = end = prompt.find(sentences[0]) if sentences else -1
        for sentence in sentences:
            found = prompt.find(sentence, end) if end >= 0 else -1
            end = found + len(sentence) if found >= 0 else -1
        if start >= 0 and end >= 0:
            placed.append(Span(span.kind, span.label, start, end))
    return placed


def reference_prompt(tokenizer, sample: Sample, chat_template: bool) -> str:
    """A benchmark's prompt: its messages (or its task text as the one user turn) in the model's chat
    template, then its answer prefix, as RULER runs chat models; without a chat template, the texts joined
    by blank lines and the prefix (RULER's "base" template)."""
    messages = sample.messages or ({"role": "user", "content": sample.user},)
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False) \
            + sample.answer_prefix
    return raw_start(tokenizer) + "\n\n".join(m["content"] for m in messages) + sample.answer_prefix


def build_reference(tokenizer, spec: ProbeSpec, task: TaskSpec, chat_template: bool) -> ProbeInstance:
    """A benchmark-faithful task, fitted to spec.length by the benchmark's own length accounting (RULER:
    the largest sample whose prompt plus the new tokens fits; the NIAH test: its context cut to L tokens)."""
    if spec.haystack:
        raise HaystackError(f"'{task.name}' keeps its benchmark's own haystack; to choose another, use the "
                            "lab's own preset of the same task.")
    params = task.defaults() | task.typed(spec.params)
    if task.builder in DIRECT:
        make, _, length_caps = DIRECT[task.builder]
        instance = reference_instance(tokenizer, spec, task, make(tokenizer, spec.length, float(spec.depth), spec.seed,
                                                                   params), task.builder, chat_template)
        if length_caps and instance.prompt_tokens + task.max_new_tokens > spec.length:
            raise HaystackError(f"'{task.name}' has a fixed size: its prompt takes {instance.prompt_tokens} tokens and "
                                f"{task.max_new_tokens} new tokens; choose a length of at least "
                                f"{instance.prompt_tokens + task.max_new_tokens}, or a smaller size setting.")
        return instance
    generate, _, unit, smallest = SIZED[task.builder]

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    def fits(size: int) -> bool:
        sample = generate(spec.seed, params, size, spec.length, count_tokens)
        return count_tokens(reference_prompt(tokenizer, sample, chat_template)) + task.max_new_tokens <= spec.length

    if not fits(smallest):
        least = count_tokens(reference_prompt(tokenizer, generate(spec.seed, params, smallest, spec.length, count_tokens),
                                              chat_template)) + task.max_new_tokens
        raise HaystackError(f"Length {spec.length} is too short for '{task.name}': its template, smallest haystack "
                            f"and {task.max_new_tokens} new tokens take {least}. Choose at least {least}.")
    low = largest_fitting(fits, smallest)
    return reference_instance(tokenizer, spec, task, generate(spec.seed, params, low, spec.length, count_tokens),
                              f"{low} {unit}", chat_template)


def reference_instance(tokenizer, spec: ProbeSpec, task: TaskSpec, sample: Sample, size: str,
                       chat_template: bool = True) -> ProbeInstance:
    """The built probe of a benchmark sample, with its haystack, needles and distractors located."""
    prompt = reference_prompt(tokenizer, sample, chat_template)
    start = prompt.find(sample.user)
    spans = [Span("haystack", size, start, start + len(sample.user))]
    for kind, texts in (("needle", sample.needles), ("distractor", sample.distractors)):
        for text in texts:
            at = prompt.find(text, start)
            spans += [Span(kind, kind, at, at + len(text))] if at >= 0 else []
    prompt_tokens, token_spans = _token_spans(tokenizer, prompt, spans)
    return ProbeInstance(spec, task.name, prompt, sample.question or sample.user.rsplit("\n", 1)[-1],
                         sample.answer_prefix, sample.outputs, task.scorer, token_spans, prompt_tokens, len(prompt),
                         task.max_new_tokens, " " + ", ".join(sample.outputs), "", task.haystack)


def _fine_tune(measure: Callable[[int], int], units: _Units, size: int, target: int) -> None:
    """Close the last gap below one unit: swap the last few units for spare ones of a better length.

    Only the tail of the haystack changes, so probes of one seed keep sharing their prefix.
    """
    for position in range(size - 1, max(size - 9, -1), -1):
        error = target - measure(size)
        if abs(error) <= target * LENGTH_TOLERANCE / 2:
            return
        units.ensure(size + 64)
        current = units.order[position]
        spares = units.order[size:size + 64]
        best = min(spares, key=lambda i: abs(units.tokens[i] - units.tokens[current] - error))
        slot = units.order.index(best)
        units.order[position], units.order[slot] = best, current
        if abs(target - measure(size)) >= abs(error):  # no better: put it back
            units.order[position], units.order[slot] = current, best


def _best_size(measure: Callable[[int], int], units: _Units, plan: Plan, target: int, smallest: int) -> int:
    """The unit count whose prompt is closest to `target` tokens: estimate, then correct by measuring."""
    if plan.sized_context is not None:  # whole contexts: bisect on the size
        low, high = 1, 2
        while measure(high) < target:
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if measure(middle) <= target else (low, middle)
        return min((low, high), key=lambda s: abs(measure(s) - target))
    size, tried, previous = units.covering(target - smallest), {}, None
    for _ in range(8):
        tried[size] = measure(size)
        error = target - tried[size]
        if abs(error) <= target * LENGTH_TOLERANCE / 2:
            break
        per_unit = max(1.0, sum(units.tokens[:max(size, 1)]) / max(size, 1))  # drawn order = filler order here
        if previous is not None and previous != size and tried[previous] != tried[size]:
            # measured tokens per unit: a transform that repeats the context counts each unit more than once
            per_unit = max(1.0, (tried[size] - tried[previous]) / (size - previous))
        step = round(error / per_unit) or (1 if error > 0 else -1)
        previous, size = size, max(0, size + step)
        if size in tried:
            break
    return min(tried, key=lambda s: abs(tried[s] - target))
