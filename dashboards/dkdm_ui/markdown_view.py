"""Markdown documents (the pipeline and reproduction reports) embedded in a page, with wide tables kept inside.

A report's table can be wider than the page's column (long headers, code spans, unbroken names); st.markdown lets
it run past the container's right edge. Here each table is its own scroll box: as wide as its content up to the
container, then scrolling sideways inside it, with the report's bold, code and links kept as written.
"""
from __future__ import annotations

import streamlit as st

KEY_PREFIX = "embedded-markdown"
# st.container(key=...) gives its element the class st-key-<key>: the rule applies to these documents only.
_STYLE = (f'<style>[class*="st-key-{KEY_PREFIX}"] table '
          "{display: block; width: fit-content; max-width: 100%; overflow-x: auto;}</style>")


def embedded_markdown(body: str, key: str) -> None:
    """`body` rendered as markdown in a container whose tables scroll inside it instead of overflowing it."""
    st.markdown(_STYLE, unsafe_allow_html=True)
    with st.container(key=f"{KEY_PREFIX}-{key}"):
        st.markdown(body)
