-- An audit database as round 1 of defectmap wrote it (before schema migrations existed).
CREATE TABLE IF NOT EXISTS inspections (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    filename TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    score REAL NOT NULL,
    normalized_score REAL,
    p_value REAL,
    decision TEXT,
    thresholds TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    elapsed_ms REAL NOT NULL,
    regions TEXT NOT NULL,
    image_path TEXT,
    heatmap_path TEXT,
    overlay_path TEXT
);
CREATE INDEX IF NOT EXISTS inspections_created_at ON inspections (created_at);
CREATE INDEX IF NOT EXISTS inspections_sha256 ON inspections (image_sha256);
INSERT INTO inspections (id, created_at, filename, image_sha256, width, height, score,
    normalized_score, p_value, decision, thresholds, model_name, model_hash, elapsed_ms,
    regions, image_path, heatmap_path, overlay_path)
VALUES
 ('round1-a', '2026-11-29T08:00:00.000000Z', 'a.png', 'aa', 4, 4, 0.5, 0.4, 0.6, 'ok',
  '{"image_threshold":1.0}', 'm', 'h', 10.0, '[]', NULL, NULL, NULL),
 ('round1-b', '2026-11-29T08:00:01.000000Z', 'b.png', 'bb', 4, 4, 2.5, 0.7, 0.05, 'defect',
  '{"image_threshold":1.0}', 'm', 'h', 11.0, '[{"bbox":[1,2,3,4],"area":4,"peak":0.9}]',
  NULL, NULL, NULL);
