"""A long randomised run of the property of tests/test_property_pyvene.py: fxvene's outputs equal
pyvene 0.1.8's, or both raise, over drawn forward calls.

    python scripts/property_search.py --examples 2000            # a fresh random seed, printed
    python scripts/property_search.py --examples 500 --seed 7    # repeat a search
    python scripts/property_search.py --families llama,gru       # only these model families
    python scripts/property_search.py --space generate --examples 300   # generate / save / bf16 calls

CI runs the same property derandomized with a small ``max_examples``; this script draws many more
cases from a random seed and stops at the first counterexample, printed (shrunk) as a ``case=`` dict
ready to paste into ``FOUND`` (an ``@example(case=...)`` of its family's test). ``--space`` picks the
drawn calls: ``forward`` (tests/test_property_pyvene.py: every family, T5 included, use_cache, links,
aliased sites, None entries, source_representations in each shape, Skip and the trainable types), or
``generate``, ``save`` (save/load both ways), ``half`` (bf16) from tests/test_property_pyvene_more.py.
Needs pyvene 0.1.8 and hypothesis (the ``test`` extra).
"""

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=1000, help="how many drawn calls (default 1000)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one, printed)")
    ap.add_argument("--families", default=None, help="comma-separated subset of the families")
    ap.add_argument("--stats", action="store_true", help="print how many calls were compared per family")
    ap.add_argument("--space", default="forward", choices=["forward", "generate", "save", "half"])
    args = ap.parse_args(argv)

    import hypothesis as hyp
    import torch

    torch.set_num_threads(1)
    import test_property_pyvene as prop

    if args.families:
        wanted = args.families.split(",")
        unknown = sorted(set(wanted) - set(prop.FAMILIES))
        if unknown:
            ap.error(f"--families: unknown {unknown}; expected names among {prop.FAMILIES}")
        prop.FAMILIES[:] = wanted
    seed = random.randrange(2**32) if args.seed is None else args.seed
    print(
        f"property search ({args.space}): {args.examples} examples, seed {seed}, families {prop.FAMILIES}", flush=True
    )
    counts = {}

    strategy, check = prop.cases(), prop.check
    if args.space != "forward":
        import tempfile

        import hypothesis.strategies as st
        import test_property_pyvene_more as more

        fams = [f for f in prop.FAMILIES if f in ("gpt2", "llama")] or ["gpt2"]
        strategy, check = {
            "generate": (st.sampled_from(fams).flatmap(more.gen_cases), more.check_generate),
            "save": (more.save_cases(), lambda c: more.check_save_load(c, Path(tempfile.mkdtemp()) / "saved")),
            "half": (more.half_cases(), more.check_half),
        }[args.space]

    @hyp.seed(seed)
    @hyp.settings(
        derandomize=False,
        deadline=None,
        database=None,
        max_examples=args.examples,
        suppress_health_check=list(hyp.HealthCheck),
        print_blob=True,
    )
    @hyp.given(case=strategy)
    def search(case):
        check(case)
        counts[case["family"]] = counts.get(case["family"], 0) + 1

    try:
        search()
    except Exception:
        print(f"counterexample found (seed {seed}); add it as @example(case=...) to the test", flush=True)
        raise
    print(f"no difference found in {args.examples} examples (seed {seed})")
    if args.stats:
        print(counts)


if __name__ == "__main__":
    main()
