import hashlib

import numpy as np
import streamlit as st

from cifar_dash import analysis, answers, figures, images, ood, predict, stages
from cifar_dash.data import CLASS_NAMES
from pages import _frame, _shared, _widgets

_frame.page_setup("Upload & predict")

st.title("Upload & predict")
st.caption(
    "Every trained stage looks at the same 32x32 image and picks one of CIFAR-10's ten classes: "
    + ", ".join(CLASS_NAMES)
    + ". A picture of anything else still gets one of these ten, so a separate detector says when a picture is "
    "probably none of them. Percentages are calibrated: each stage's probabilities are scaled by one temperature "
    "fit on images it never trained on, so 70% means right about 70% of the time on CIFAR-10 test images."
)
trained = [r.stage.key for r in _shared.trained_results()]
if not trained:
    st.info("No stage is trained yet: train one from the sidebar first.")
    st.stop()

files = st.file_uploader(
    f"Images (PNG, JPEG, WebP, BMP, GIF, TIFF; up to {images.MAX_MB} MB each)",
    type=list(images.UPLOAD_EXTENSIONS),
    accept_multiple_files=True,
    key="uploads",
)
c1, c2 = st.columns([1, 3])
n_random = c1.number_input("Random test images", 1, 32, 4, key="n_random")
if c2.button("Draw random test images", key="draw"):
    t = _shared.test_set()
    if t.x is None:
        st.warning("Test images unavailable: " + _shared.md_escape(t.error))
    else:
        pool = np.flatnonzero(t.available)  # every test image, or the shipped sample's
        n = min(int(n_random), len(pool))
        st.session_state["drawn"] = np.random.default_rng().choice(pool, n, replace=False).tolist()
        _widgets.test_images_note(t)
        st.caption(
            "A test image's answers are each stage's stored evaluation predictions (the same model file on the same "
            "test set, checked by its fingerprint), so no model runs for them; uploads run every model."
        )
if st.session_state.get("drawn") and st.button("Clear test images", key="clear_drawn"):
    st.session_state["drawn"] = []


@st.cache_data(show_spinner=False, max_entries=256)
def _decode(name: str, digest: str, _data: bytes):
    """Decoded upload (or its ImageError), per file content: a rerun never decodes a file twice."""
    return images.decode_many([(name, _data)])[0]


# (name, 32x32 array, preview to show or None, true label or None), or (name, ImageError) in the upload's place
items = []
for f in files or []:
    data = f.getvalue()
    items.append(_decode(f.name, hashlib.sha256(data).hexdigest(), data))
drawn = st.session_state.get("drawn", [])
t = _shared.test_set() if drawn else None
drawn = [i for i in drawn if t.x is not None and i < len(t.x) and t.available[i]]
for i in drawn:
    items.append((f"test image {i}", t.x[i], None, int(t.y[i])))
items = [(it.name, it.model_input, it.preview, None) if isinstance(it, images.Decoded) else it for it in items]
good = [it for it in items if not isinstance(it, images.ImageError)]
for it in items:
    if isinstance(it, images.ImageError) and len(good) == 0:
        st.error(_shared.md_escape(str(it)))
if not good:
    st.stop()


@st.cache_resource(show_spinner=False)
def _cache() -> predict.PredictionCache:
    return predict.PredictionCache()


batch = np.stack([it[1] for it in good])
labels = {s.key: s.label for s in stages.STAGES}
show_details = st.toggle("Show top-3 and probability bars", key="details")
show_saliency = st.toggle(
    "Show where each stage looks (saliency maps)",
    key="saliency",
    help="Red = the region the stage's answer depends on most. Each stage's map has its own scale (colour bar).",
)
method = _widgets.saliency_method("saliency_method") if show_saliency else "occlusion"
rule_box = st.empty()

# Lay every row out first, with one card per stage, then fill the cards stage by stage: the first answers show while
# the bigger models are still loading (a cold server loads nine models, the ResNets last).
rows = []  # per good image: (its row in batch, name, arr, label, {stage: card}, verdict placeholder, extras container)
b = 0  # the image's row in `batch`
for it in items:
    if isinstance(it, images.ImageError):
        st.error(_shared.md_escape(str(it)))
        st.divider()
        continue
    name, arr, preview, label = it
    try:  # one image that cannot be shown never hides the rows after it
        top_row = st.columns([1, 1, 3])
        top_row[0].image(
            preview if preview is not None else _widgets.upscale(arr, 3),
            caption=_shared.md_escape(name),
            width="stretch",
        )
        top_row[1].image(
            _widgets.upscale(arr, 4),
            caption="the 32x32 the models see" + (f" · true: {CLASS_NAMES[label]}" if label is not None else ""),
            width="stretch",
        )
        verdict_box = top_row[2].empty()
        verdict_box.caption(f"Waiting for {len(trained)} stages...")
        per_row = 3 if len(trained) > 4 else len(trained)
        cards = {}
        for start in range(0, len(trained), per_row):
            cols = st.columns(per_row)
            for col, key in zip(cols, trained[start : start + per_row]):
                cards[key] = col.container(border=True).empty()
                cards[key].markdown(f"**{labels[key]}**  \n:gray[loading...]")
        rows.append((b, name, arr, label, cards, verdict_box, st.container()))
    except Exception as e:
        st.error(_shared.md_escape(f"{name}: could not be shown ({type(e).__name__}: {e})"))
    st.divider()
    b += 1


def _card(key: str, p: np.ndarray, label, differs: bool | None = None) -> str:
    """A stage's card: its answer, then right/wrong for a test image, else whether it agrees with the weighted
    summary (``differs`` None: not known yet). Every card of a row then has as many lines: the grid stays even."""
    top = int(np.argmax(p))
    mark = ""  # colour and a word, not an emoji alone (no emoji font on many machines)
    if label is not None:
        mark = "  \n:green[right]" if top == label else "  \n:red[wrong]"
    elif differs is not None:
        mark = "  \n:orange[differs from the summary]" if differs else "  \n:gray[agrees with the summary]"
    text = f"**{labels[key]}**  \n{CLASS_NAMES[top]} · {p[top]:.0%}{mark}"
    if show_details:
        text += "  \n:gray[" + " · ".join(f"{c} {q:.0%}" for c, q in predict.top_k(p[None], 3)[0]) + "]"
    return text


probs = {}  # per stage: calibrated probabilities of the batch (raw where no temperature is fitted yet)
by_key = {r.stage.key: r for r in _shared.trained_results()}
uncalibrated = []
found = _shared.detector()  # the none-of-these detector, or why there is none
feats = None  # its stage's features of the batch, from the same model call as that stage's probabilities
cache = _cache()


def _load(key: str):
    """This thread: the stage's model, loaded only when some image is new to it (None otherwise)."""
    stamp = _shared.stage_stamp(key)
    if drawn and key in by_key:  # test images: the stage's stored answers from its evaluation, no model call
        known = predict.stored_test_probs(_shared.stored_predictions(key), by_key[key].metrics, t.fingerprint, drawn)
        if known is not None:
            cache.seed(key, stamp, t.x[drawn], known)  # the cache keys images by content
    layer = ood.LAYER if key == ood.STAGE and not isinstance(found, Exception) else None
    return stamp, layer, _shared.stage_model(key) if cache.lacks(key, stamp, batch, layer) else None


def _answer(key: str, loaded):
    """A worker thread: the stage's raw probabilities, and the detector's features. Streamlit's model cache is only
    called here if the prediction cache dropped an image between ``_load`` and this call."""
    stamp, layer, model = loaded
    load = (lambda: model) if model is not None else (lambda: _shared.stage_model(key))
    if layer:
        return cache.probs_and_features(key, stamp, layer, batch, load)
    return cache.probs(key, stamp, batch, load), None


progress = st.progress(0.0, text=f"Loading and running {len(trained)} stages...") if len(trained) > 1 else None
for n, (key, out) in enumerate(predict.pipelined(trained, _load, _answer), 1):
    if progress is not None:
        progress.progress(n / len(trained), text=f"{n} of {len(trained)} stages answered (last: {labels[key]})")
    if isinstance(out, Exception):  # a damaged model file: that stage shows the error, the rest work
        for *_, cards, _, _ in rows:
            cards[key].markdown(f"**{labels[key]}**  \n:red[no answer: the model did not load]")
        st.error(_shared.md_escape(f"{key}: {out}"))
        continue
    raw, stage_feats = out
    feats = stage_feats if stage_feats is not None else feats
    probs[key], temperature = answers.calibrated(raw, by_key[key].metrics if key in by_key else None)
    if temperature is None:
        uncalibrated.append(key)
    for r, _, _, label, cards, _, _ in rows:
        cards[key].markdown(_card(key, probs[key][r], label))
if progress is not None:
    progress.empty()
stage_keys = [k for k in trained if k in probs]  # the table's order, whichever stage answered first
uncalibrated = [k for k in stage_keys if k in uncalibrated]
if not stage_keys:
    st.stop()
accuracy = {k: by_key[k].accuracy for k in stage_keys if k in by_key}
scores = found.scores(feats) if feats is not None else None
if scores is not None:
    r = found.record
    rule_box.caption(
        f"A picture is flagged *probably none of these classes* when {found.rule()}. Measured: it fires on "
        f"{r['false_alarm_rate']:.1%} of the {r['n_test']:,} real CIFAR-10 test images (false alarms) and on "
        f"{r['detection_rate_evaluation']:.0%} of {r['n_evaluation']} held-out pictures of other things "
        "(objects, people, text). The summary answer weighs the stages: " + analysis.VOTE_RULE + "."
    )
else:
    why = str(found) if isinstance(found, Exception) else f"it needs the trained stage {ood.STAGE}"
    rule_box.caption(
        _shared.md_escape(f"No none-of-these-classes flag: {why}.")
        + " The summary answer weighs the stages: "
        + analysis.VOTE_RULE
        + "."
    )
if uncalibrated:
    st.caption(  # stage keys and a command of our own: code spans, where Markdown interprets nothing
        f"Not calibrated yet (raw probabilities shown): {', '.join(f'`{k}`' for k in uncalibrated)}. "
        f"Fit them with `python -m cifar_dash calibrate {' '.join(uncalibrated)}`."
    )

for r, name, arr, label, cards, verdict_box, extras in rows:
    try:
        per_stage = {k: probs[k][r] for k in stage_keys}
        vote = analysis.weighted_vote(per_stage, accuracy)
        for key in stage_keys:  # now that every stage has answered, mark the ones that differ from the summary
            cards[key].markdown(_card(key, per_stage[key], label, key in vote["differs"]))
        agree = len(set(vote["top"].values())) == 1
        answer = CLASS_NAMES[vote["answer"]]
        verdict = (
            f"All {len(stage_keys)} stages agree: **{answer}** ({vote['probability']:.0%} weighted)."
            if agree
            else f"Stages disagree; weighted summary **{answer}** ({vote['probability']:.0%})."
        )
        if scores is not None:
            if scores[r] > found.threshold:
                verdict += (
                    " :orange[**Probably none of these ten classes**: its features are far from every CIFAR-10 "
                    f"training image (score {scores[r]:.3f} over the threshold {found.threshold:.3f}).]"
                )
            else:
                verdict += f" :gray[Looks like CIFAR-10 to the detector (score {scores[r]:.3f}).]"
        verdict_box.markdown(verdict)
        with extras:
            if show_saliency:
                _widgets.saliency_row(arr, stage_keys, method=method)
            if show_details:
                with st.expander(f"Probability bars for {_shared.md_escape(name)}"):
                    cols = st.columns(min(3, len(stage_keys)))
                    for i, key in enumerate(stage_keys):
                        cols[i % len(cols)].markdown(labels[key])
                        cols[i % len(cols)].plotly_chart(
                            figures.probability_bars(per_stage[key]),
                            key=f"bars_{r}_{key}",
                            config={"displayModeBar": False},
                        )
    except Exception as e:  # one image that cannot be shown never hides the rows after it
        st.error(_shared.md_escape(f"{name}: could not be shown ({type(e).__name__}: {e})"))
