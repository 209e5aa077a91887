"""Diff: what one dictionary has and another lacks, for two layers of one model or two models. Atoms of A with no
match in B, of B with none in A, and the shared ones, grouped by source token, with counts, top contexts and
links to the atom pages; the summary (|A|, |B|, shared, Jaccard) is the similarity page's figure for the pair.

Matching and which atoms count are the Jaccard index's (``itda_core.similarity.diff``). The pair and the options
are in the address, so a diff can be shared: ``diff?a=ID&b=ID&atoms=evidence|all&index=raw|corrected``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from itda_core.errors import ITDAError
from itda_core.similarity.diff import NOT_COUNTED, ONLY, SHARED, DictionaryDiff
from itda_core.similarity.jaccard import ATOM_CHOICES, DEFAULT_OPTIONS, INDEX_CHOICES
from itda_dashboard import data, diff_data, nav, similarity_data
from itda_dashboard.render import Cell, label, md, tokens_html

ATOM_LABELS = {"evidence": "evidence atoms", "all": "all atoms"}
GROUPS_PER_PAGE = 20  # token groups per page of a list
ATOMS_PER_GROUP = 5  # atoms whose links and top contexts a group shows (all of them are in the CSV)
CONTEXTS_PER_ATOM = 3
MAX_TOKEN_ROWS = 300  # rows of the by-token table

st.title("Dictionary diff")
st.caption(
    "What one dictionary has and another lacks: the atoms of A with no match in B, of B with none in A, and the "
    "shared ones, grouped by source token. Atoms match as in the Jaccard index: by document and token position "
    "within one tokenizer, by the character where the token ends across tokenizers; by default only the atoms "
    "that carry evidence count (not the initial atoms picked arbitrarily). See docs/similarity.md."
)
nav.require_store()
dicts = data.dictionaries()
runs = {
    r: dict(zip(g["layer"].astype(int), g["dict_id"].astype(int), strict=True))
    for r, g in dicts.groupby("run", sort=False)
}
where = {int(d): (str(r), int(layer)) for d, r, layer in zip(dicts["dict_id"], dicts["run"], dicts["layer"],
                                                              strict=True)}  # fmt: skip
names = {d: f"{r} L{layer}" for d, (r, layer) in where.items()}

# ---- the pair and the options: from the address when it changes, else the widgets' (or the defaults) --------

KEYS = {"a": ("diff_run_a", "diff_layer_a"), "b": ("diff_run_b", "diff_layer_b")}
CHOICES = {"atoms": ("diff_atoms", ATOM_CHOICES, DEFAULT_OPTIONS.atoms),
           "index": ("diff_index", INDEX_CHOICES, DEFAULT_OPTIONS.index)}  # fmt: skip
params = nav.url_params()
url_key = tuple(params.get(name) for name in (*KEYS, *CHOICES))
if st.session_state.get("_diff_url") != url_key:
    st.session_state["_diff_url"] = url_key
    for name, (run_key, layer_key) in KEYS.items():
        if name not in params:
            continue
        found = diff_data.resolve_id(params[name], set(where))
        if found is None:
            st.warning(f"Ignored {name}={nav.quoted(params[name])} in the address: not a dictionary of this store "
                       "(the address takes dictionary ids, as in the atom pages' dict=).")
            continue
        st.session_state[run_key], st.session_state[layer_key] = where[found]
    for name, (key, allowed, default) in CHOICES.items():
        if name not in params:
            continue
        if params[name] in allowed:
            st.session_state[key] = params[name]
        else:
            st.warning(f"Ignored {name}={nav.quoted(params[name])} in the address; showing {name}={default} "
                       f"(one of {', '.join(allowed)}).")
            st.session_state[key] = default
first_a, first_b = diff_data.default_pair(runs)
for (run_key, layer_key), (run, layer) in zip(KEYS.values(), (first_a, first_b), strict=True):
    if st.session_state.get(run_key) not in runs:
        st.session_state[run_key] = run
    if st.session_state.get(layer_key) not in runs[st.session_state[run_key]]:
        chosen = sorted(runs[st.session_state[run_key]])
        st.session_state[layer_key] = layer if layer in chosen else chosen[len(chosen) // 2]
for key, allowed, default in CHOICES.values():
    if st.session_state.get(key) not in allowed:
        st.session_state[key] = default

names_list = list(runs)
c = st.columns([3, 2, 3, 2])
run_a = c[0].selectbox("Model A", names_list, key="diff_run_a")
layer_a = c[1].selectbox("Layer A", sorted(runs[run_a]), key="diff_layer_a")
run_b = c[2].selectbox("Model B", names_list, key="diff_run_b")
layer_b = c[3].selectbox("Layer B", sorted(runs[run_b]), key="diff_layer_b")
o = st.columns([3, 3, 4])
atoms_choice = o[0].radio("Atoms", list(ATOM_CHOICES), key="diff_atoms", horizontal=True,
                          format_func=lambda x: ATOM_LABELS[x] + (" (default)" if x == DEFAULT_OPTIONS.atoms else ""))
index_choice = o[1].radio("Index", list(INDEX_CHOICES), key="diff_index", horizontal=True,
                          format_func=lambda x: x + (" (default)" if x == DEFAULT_OPTIONS.index else ""),
                          help="Which Jaccard the summary shows (the lists do not depend on it).")
options = similarity_data.jaccard_options(atoms_choice, index_choice)
dict_a, dict_b = runs[run_a][layer_a], runs[run_b][layer_b]
view_params = {"a": str(dict_a), "b": str(dict_b), "atoms": options.atoms, "index": options.index}
if params != view_params:
    st.query_params.from_dict(view_params)
    st.session_state["_diff_url"] = tuple(view_params[name] for name in (*KEYS, *CHOICES))
name_a, name_b = names[dict_a], names[dict_b]
o[2].caption(f"A = **{md(name_a)}** (dictionary {dict_a}), B = **{md(name_b)}** (dictionary {dict_b}). "
             "The address names this pair.")

try:
    found = diff_data.diff(dict_a, dict_b, options)
except ITDAError as err:  # not comparable: the similarity page's reason, and nothing else
    st.warning("Not comparable: " + md(str(err)))
    st.stop()


def value_text(x: float) -> str:
    """A Jaccard value ("–" where undefined)."""
    return f"{x:.3f}" if np.isfinite(x) else "–"


# ---- the summary --------------------------------------------------------------------------------------------

m = st.columns(4)
m[0].metric(f"|A| {md(name_a)}", f"{found.n_a:,}")
m[1].metric(f"|B| {md(name_b)}", f"{found.n_b:,}")
m[2].metric("Shared |A ∩ B|", f"{found.shared:,}")
m[3].metric(options.label, value_text(found.jaccard))
st.markdown(
    f"**{md(name_a)} × {md(name_b)}**: Jaccard {value_text(found.jaccard)} ({options.index}, "
    f"{ATOM_LABELS[options.atoms]}), {found.shared:,} shared atoms, {len(found.only_a):,} only in A, "
    f"{len(found.only_b):,} only in B"
)
skipped_a, skipped_b = len(found.ids("a", NOT_COUNTED)), len(found.ids("b", NOT_COUNTED))
st.caption(
    f"Atoms matched by {found.method}"
    + (" (document and token position)" if found.method == "keys" else " (the character where each token ends)")
    + f". Not counted: {skipped_a:,} atoms of A and {skipped_b:,} of B (initial atoms picked arbitrarily"
    + (", or" if options.atoms == "evidence" else ":") + " repeats of a source token the dictionary already holds)."
)
if found.too_few:
    st.warning(f"No Jaccard value: a dictionary has fewer than {options.min_atoms} {ATOM_LABELS[options.atoms]}, "
               "too few to say how alike they are. The lists below are complete.")
st.download_button(
    "Download the lists (CSV)",
    data=diff_data.csv_bytes(found, names),
    file_name=f"itda_diff_{dict_a}_{dict_b}.csv",
    mime="text/csv",
    help="Every atom of both dictionaries: status (only, shared, not counted), matched atom, token, group, "
    "source and atom-page address.",
    key="diff_csv",
)


def contexts_html(hits: list[diff_data.Hit]) -> str:
    """An atom's top contexts as a small table: coefficient, the text with the token coloured, document."""
    scale = max((abs(h.coef) for h in hits), default=1.0) or 1.0
    rows = [
        f'<tr><td style="padding:2px 8px;font-family:monospace;color:#555;vertical-align:top">{h.coef:+.3f}</td>'
        f'<td style="padding:2px 4px">{tokens_html([Cell(h.token, h.coef, target=True)], scale, prefix=h.before, suffix=h.after)}</td>'  # noqa: E501
        f'<td style="padding:2px 8px;color:#999;font-size:0.8em;white-space:nowrap">doc {h.doc_id}</td></tr>'
        for h in hits
    ]
    return '<table style="border-collapse:collapse;width:100%">' + "".join(rows) + "</table>"


def show_groups(diff: DictionaryDiff, side: str, status: str) -> None:
    """One list: token groups of one side and status, a page at a time, each with its atoms' links and top
    contexts (the first group open)."""
    dict_id, other = (diff.dict_a, diff.dict_b) if side == "a" else (diff.dict_b, diff.dict_a)
    groups = diff.groups(side, status)
    if groups.empty:
        st.caption("None.")
        return
    pages = -(-len(groups) // GROUPS_PER_PAGE)
    key = f"diff_page_{side}_{status}"
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages:,}; {GROUPS_PER_PAGE} tokens each)", min_value=1,
                                   max_value=pages, value=1, step=1, key=key))
    shown = diff_data.page_of(groups, page, GROUPS_PER_PAGE)
    st.dataframe(
        shown.assign(
            token=[label(str(g), markers=False) for g in shown["group"]],
            first=[data.atom_url(dict_id, atoms[0]) for atoms in shown["atoms"]],
            ids=[", ".join(map(str, atoms[:20])) + (" …" if len(atoms) > 20 else "") for atoms in shown["atoms"]],
        )[["token", "count", "first", "ids"]],
        hide_index=True,
        width="stretch",
        column_config={
            "count": st.column_config.NumberColumn("atoms"),
            "first": st.column_config.LinkColumn("first atom", display_text=r"atom=(\d+)$"),
            "ids": st.column_config.TextColumn("atom ids"),
        },
        key=f"{key}_table_{dict_id}_{other}",
    )
    st.caption(f"Tokens {(page - 1) * GROUPS_PER_PAGE + 1:,}–{(page - 1) * GROUPS_PER_PAGE + len(shown):,} of "
               f"{len(groups):,} ({int(groups['count'].sum()):,} atoms), most atoms first.")
    side_rows = diff.atoms[diff.atoms["side"] == side].set_index("atom")
    for i, (group, count, atoms) in enumerate(zip(shown["group"], shown["count"], shown["atoms"], strict=True)):
        box = st.expander(f"{md(label(str(group), markers=False))} · {count:,} atom{'s' if count != 1 else ''}",
                          expanded=i == 0, key=f"diff_x_{dict_id}_{other}_{status}_{page}_{i}", on_change="rerun")
        if box.open is False:  # lazy: a closed group's atoms and contexts are not read nor sent
            continue
        with box:
            show_atoms(diff, side, status, side_rows, atoms)
            if count > ATOMS_PER_GROUP:
                st.caption(f"And {count - ATOMS_PER_GROUP:,} more atoms of this token (ids in the table, all in "
                           "the CSV).")


def show_atoms(diff: DictionaryDiff, side: str, status: str, side_rows: pd.DataFrame, atoms: list[int]) -> None:
    """The first atoms of a group: a link to each atom page (and its match, for shared atoms), its source and
    its stored top contexts."""
    dict_id, other = (diff.dict_a, diff.dict_b) if side == "a" else (diff.dict_b, diff.dict_a)
    chosen = [int(a) for a in atoms[:ATOMS_PER_GROUP]]
    hits = diff_data.top_contexts(dict_id, chosen, CONTEXTS_PER_ATOM)
    for atom in chosen:
        row = side_rows.loc[atom]
        text = f"{names[dict_id]} atom {atom}"
        if status == SHARED:
            text += f" (↔ {names[other]} atom {int(row['match'])})"
        nav.atom_link(dict_id, atom, text)
        st.caption(f"source: document {int(row['doc_id'])}, position {int(row['position'])}")
        if hits.get(atom):
            st.html(contexts_html(hits[atom]))
        else:
            st.caption("No held-out contexts (not indexed, or never used).")


# lazy tabs: only the open one's lists are built and sent (fixed labels keep the choice across pairs)
tabs = st.tabs(["Only in A", "Only in B", "Shared", "By token"], key="diff_tab", on_change="rerun")
if tabs[0].open is not False:
    with tabs[0]:
        st.caption(f"{len(found.only_a):,} atoms of {md(name_a)} with no match in {md(name_b)}.")
        show_groups(found, "a", ONLY)
if tabs[1].open is not False:
    with tabs[1]:
        st.caption(f"{len(found.only_b):,} atoms of {md(name_b)} with no match in {md(name_a)}.")
        show_groups(found, "b", ONLY)
if tabs[2].open is not False:
    with tabs[2]:
        st.caption(f"{found.shared:,} atoms of {md(name_a)} matched in {md(name_b)} (grouped by A's token).")
        show_groups(found, "a", SHARED)
if tabs[3].open is not False:
    with tabs[3]:
        table = found.token_table()
        st.dataframe(
            table.head(MAX_TOKEN_ROWS).assign(group=[label(str(g), markers=False) for g in table["group"].head(
                MAX_TOKEN_ROWS)]).rename(columns={"group": "token", "only_a": "only A", "only_b": "only B"}),
            hide_index=True,
            width="stretch",
            key="diff_tokens",
        )
        st.caption(f"{min(len(table), MAX_TOKEN_ROWS):,} of {len(table):,} tokens, the largest difference first "
                   "(shared: matched pairs, by A's token text).")
