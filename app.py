"""cifar-dash: CIFAR-10 from an MLP to an ImageNet ResNet, stage by stage. Run with `streamlit run app.py`.

This file is the router: ``st.navigation`` registers the pages of pages/ (the Journey page, the home, is
pages/journey.py) and runs the one the URL names. Every page starts with _frame.page_setup(), which draws the
navigation links and the training sidebar, so any page URL works on its own."""

import streamlit as st

from pages import _frame

pages = [st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(_frame.NAV)]
st.navigation(pages, position="hidden").run()
