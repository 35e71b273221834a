// The login form: posts JSON to /login, which sets the session cookie.
const form = document.getElementById('login');
const err = document.getElementById('login-error');
form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  err.textContent = '';
  const data = new FormData(form);
  const res = await fetch('/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user: data.get('user'), password: data.get('password') }),
  });
  if (res.ok) {
    location.href = '/';
  } else {
    const body = await res.json().catch(() => ({}));
    err.textContent = body.error || `login failed (${res.status})`;
  }
});
