"""cifar-dash: CIFAR-10 from a 46% MLP to 94%, stage by stage. Run with `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="cifar-dash", page_icon=":material/trending_up:", layout="wide")

from pages import _shared  # noqa: E402  (after set_page_config)

pages = [
    st.Page("pages/journey.py", title="Journey", icon=":material/trending_up:", default=True),
    st.Page("pages/explorer.py", title="Stage explorer", icon=":material/search:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/predict.py", title="Upload & predict", icon=":material/upload:"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
]
page = st.navigation(pages)
_shared.training_sidebar()
page.run()
