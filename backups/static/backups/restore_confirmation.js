// The restore button stays disabled until the database's name has been typed exactly (the
// server checks it again), and cannot be pressed twice.
"use strict";
{
    const form = document.getElementById("restore-form");
    const input = document.getElementById("id_confirm_database");
    const button = document.getElementById("restore-button");
    const update = () => {
        button.disabled = input.value.trim() !== input.dataset.expected;
    };
    input.addEventListener("input", update);
    form.addEventListener("submit", () => {
        button.value = "Starting the restore…";
        setTimeout(() => { button.disabled = true; });
    });
    update();
}
