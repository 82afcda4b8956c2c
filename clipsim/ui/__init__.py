"""The only Streamlit-aware helpers: cached workspace access, session/URL state and reusable widgets."""
