-- `rose split sync`, move `relations`: delete the target rows of the group keys in sync_keys
-- (parent and child), before the move's transform (relations.sql) runs again for them. Runs in
-- db_relations in the sync's transaction, as relations_owner; split.sync_outcome says which
-- source rows (ids kept) each key moved.
DELETE FROM relations.container_relations AS target
USING split.sync_outcome AS synced
JOIN sync_keys AS k ON k.source_table = 'container_relations' AND k.key = synced.key
WHERE synced.move = 'relations' AND synced.source_table = 'container_relations'
  AND synced.outcome = 'moved' AND target.id = synced.source_id;
