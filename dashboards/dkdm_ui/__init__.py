"""Streamlit-side helpers of the dkdm dashboard (cached queries, shared widgets, the paper-vs-ours sections)."""
