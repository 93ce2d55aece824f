"""The analyst surface: the read-only SQL allow-list (sql.py) and the analyst views
(views.py, pipelines/conf/views.yaml)."""
