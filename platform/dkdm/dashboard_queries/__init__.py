"""What the dashboard shows, as plain pandas frames and dataclasses: queries over MLflow (runs), Optuna (studies),
DVC (pipeline) and the paper's tables (compare). No Streamlit here: the pages in dashboards/ cache and draw them
(dashboards/dkdm_ui/cached.py), and these stay testable without a browser.
"""
