#!/usr/bin/env python3
"""Print `name address` for every host of an inventory (lab container layout).

Reads the inventory with ansible-inventory so the lab's containers always
match what the playbooks see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main() -> int:
    inventory = sys.argv[1]
    raw = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", inventory, "--list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(raw)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    for name in sorted(hostvars):
        address = hostvars[name].get("neurondb_address")
        if not address:
            print(f"host {name} has no neurondb_address in {inventory}", file=sys.stderr)
            return 1
        print(name, address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
