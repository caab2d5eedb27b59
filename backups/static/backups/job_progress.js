// Keeps a job's progress page current: polls the job's progress (a signed URL that needs no
// session, so it answers while a restore holds the site's database) and reloads the page, which
// then shows the outcome, once the job has finished. Every half minute it reloads anyway: the
// page itself notices a worker that died.
"use strict";
{
    const RELOAD_EVERY = 30;
    let polls = 0;
    const box = document.getElementById("job-progress");
    const text = (id, value) => { document.getElementById(id).textContent = value || "-"; };
    const show = (state) => {
        text("job-phase", state.phase_label);
        const bar = document.getElementById("job-bar");
        if (state.percent === null) {
            bar.removeAttribute("value");
        } else {
            bar.value = state.percent;
        }
        let done = state.done;
        if (done && state.total) done += " of " + state.total;
        if (done && state.percent !== null) done += " (" + state.percent + "%)";
        text("job-done", done);
        text("job-rate", state.rate);
        text("job-elapsed", state.elapsed);
        text("job-left", state.left);
    };
    const poll = async () => {
        try {
            const response = await fetch(box.dataset.pollUrl, {credentials: "same-origin"});
            if (response.ok) {
                const state = await response.json();
                if (state.finished || ++polls >= RELOAD_EVERY) {
                    window.location.reload();
                    return;
                }
                show(state);
            }
        } catch (error) {
            // The server may be busy or restarting: try again at the next tick.
        }
        setTimeout(poll, 1000);
    };
    setTimeout(poll, 1000);
}
