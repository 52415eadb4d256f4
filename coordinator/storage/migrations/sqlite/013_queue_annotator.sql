-- A ControlNet job's map: the control type whose map the node must make from the source image ('' when the
-- source already is the map, `image_is_control`, or for no ControlNet). A pop filters on it
-- (coordinator/capabilities.py) against the types a node declares it can annotate.
ALTER TABLE queue ADD COLUMN annotator TEXT NOT NULL DEFAULT '';
-- Jobs queued before this version: from the request each belongs to.
UPDATE queue SET annotator = queue.control_type
FROM requests AS r
WHERE r.id = queue.request_id AND queue.control_type <> ''
    AND COALESCE(json_extract(r.info, '$.body.params.image_is_control'), 0) = 0;
