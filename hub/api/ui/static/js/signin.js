// The sign-in form: post the key, and on success load the dashboard (the answer set the
// session cookie). The key never goes in the URL or in storage.

const form = document.getElementById("signin-form");
const error = document.getElementById("signin-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const key = form.elements.key.value.trim();
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const r = await fetch("/ui/session", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ key }),
    });
    if (r.ok) {
      window.location.assign("/ui#/fleet");
      window.location.reload();
      return;
    }
    const data = await r.json().catch(() => ({}));
    error.textContent =
      r.status === 401 ? "That key was not accepted: check it, or ask an admin for a new one."
        : typeof data.detail === "string" ? data.detail : `The hub answered ${r.status}.`;
  } catch (e) {
    error.textContent = `Cannot reach the hub: ${e.message}`;
  }
  error.hidden = false;
  button.disabled = false;
});
