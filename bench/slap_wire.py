"""Speed of the SLAP wire codec on the largest document of the protocol: a whole computer.

The proxy encodes the full computer (every partition, its parameters, its software release) on
each `getFullComputerInformation`, i.e. on every node run; the node decodes it. Target: encoding
a 1000-partition computer in well under 30 ms. Also shown: the proxy's path after a write, where
every partition but the changed one is kept encoded (`wire.Fragment`) and the document is a join.

    .venv/bin/python bench/slap_wire.py [--partitions 1000] [--runs 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slapos.slap import wire  # noqa: E402
from slapos.slap.objects import Computer, _decode  # noqa: E402

SR = "https://lab.example/software/theia/software.cfg"


def partition(i: int) -> wire.WireObject:
    """A busy partition shaped like capture 019 (JSON parameters, two addresses, a timestamp)."""
    software = wire.WireObject("SoftwareRelease", (SR, "COMP-BENCH"), {
        "_computer_guid": "COMP-BENCH", "_software_instance_list": [], "_software_release": SR})
    parameters = {
        "_": "{\n" + f'  "title": "instance <{i}> & co",\n  "replicas": 2\n' + "}",
        "full_address_list": [],
        "instance_title": f"instance{i}",
        "ip_list": [(f"slaptap{i}", f"10.0.{i // 250}.{i % 250}"), (f"slaptap{i}", f"fd00::2:{i:x}")],
        "root_instance_title": "root",
        "slap_computer_id": "COMP-BENCH",
        "slap_computer_partition_id": f"slappart{i}",
        "slap_software_release_url": SR,
        "slap_software_type": "default",
        "slave_instance_list": [],
        "timestamp": "1795625303.3630798",
    }
    return wire.WireObject("ComputerPartition", ("COMP-BENCH", f"slappart{i}", None), {
        "_computer_id": "COMP-BENCH", "_connection_dict": {"url": f"https://[fd00::2:{i:x}]:8080/", "password": "pw"},
        "_instance_guid": f"COMP-BENCH-slappart{i}", "_need_modification": 1, "_parameter_dict": parameters,
        "_partition_id": f"slappart{i}", "_request_dict": None, "_requested_state": "started",
        "_software_release_document": software})


def measure(function, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, min(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    computer = wire.WireObject("Computer", ("COMP-BENCH",), {
        "_computer_id": "COMP-BENCH",
        "_computer_partition_list": [partition(i) for i in range(args.partitions)],
        "_software_release_list": [wire.WireObject("SoftwareRelease", (SR, "COMP-BENCH"), {
            "_computer_guid": "COMP-BENCH", "_requested_state": "available",
            "_software_instance_list": [], "_software_release": SR})],
    })
    started = time.perf_counter()
    document = wire.dumps(computer)
    cold = (time.perf_counter() - started) * 1000
    print(f"{args.partitions} partitions: document {len(document) / 1e6:.2f} MB")
    print(f"  dumps (first call, cold string cache) {cold:7.1f} ms")
    median, best = measure(lambda: wire.dumps(computer), args.runs)
    print(f"  dumps                       median {median:7.1f} ms   best {best:7.1f} ms")
    # what the proxy does after a write: partitions kept encoded (wire.Fragment), one encoded again
    partitions = computer.attrs["_computer_partition_list"]
    fragments = [wire.encode_fragment(p) for p in partitions]
    with_fragments = wire.WireObject("Computer", computer.args, {**computer.attrs, "_computer_partition_list": fragments})
    assert wire.dumps(with_fragments) == document

    def one_changed() -> str:
        fragments[0] = wire.encode_fragment(partitions[0])
        return wire.dumps(with_fragments)

    median, best = measure(one_changed, args.runs)
    print(f"  dumps, 1 changed, rest cached median {median:7.2f} ms   best {best:7.2f} ms")
    median, best = measure(lambda: wire.loads(document), max(3, args.runs // 4))
    print(f"  loads (WireObject records)  median {median:7.1f} ms   best {best:7.1f} ms")
    median, best = measure(lambda: _decode(None, document, Computer, "bench"), max(3, args.runs // 4))
    print(f"  loads into client objects   median {median:7.1f} ms   best {best:7.1f} ms")
    small = wire.dumps({"foo": "bar", "n": 3})
    median, _ = measure(lambda: wire.loads(small), 200)
    print(f"  loads of a small form field median {median * 1000:7.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
