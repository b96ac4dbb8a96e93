"""A conflict handler in Python, to show that the WIT, not Rust, is the
contract: the db named in config.prefer wins every conflict it took part
in; the others go to the newest change (ties: the first listed).

Build: componentize-py -d ../../wit -w conflict-handler componentize app -o python_prefer.wasm
"""

from typing import List

import wit_world
from wit_world.imports import conflicts, host, types


class WitWorld(wit_world.WitWorld):
    def resolve(self, sync: types.SyncInfo, table: types.TableInfo, batch: List[conflicts.Conflict]) -> conflicts.Verdict:
        settings = dict(sync.config)
        prefer = settings.get("prefer")
        index = next((i for i, db in enumerate(sync.dbs) if db.name == prefer), None)
        decisions = []
        preferred = 0
        for conflict in batch:
            dbs = [v.db for v in conflict.versions]
            if index is not None and index in dbs:
                decisions.append(conflicts.Decision_Winner(index))
                preferred += 1
            else:
                newest = max(conflict.versions, key=lambda v: v.changed_at)
                decisions.append(conflicts.Decision_Winner(newest.db))
        host.log(types.LogLevel.INFO, f"{table.name}: {preferred} of {len(batch)} conflicts went to {prefer}")
        return conflicts.Verdict_PerKey(decisions)
