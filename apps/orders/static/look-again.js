// The return page of an order whose outcome is not known yet (SumUp has not confirmed the
// payment, or events the bookings of an order with nothing to pay) looks again by itself: it
// asks for the order's state (the return page's address, as JSON) every few seconds and loads
// that page once the state has changed, so the buyer sees the outcome without reloading. Not a
// <meta http-equiv="refresh">: a page reloading itself on a timer, news or not, fails WCAG 2.2.1
// (axe's "meta-refresh", critical); this page changes only when there is something to show.
// (A browser without scripts has only that: the page's <noscript> refresh, a bounded number of
// times, which a browser running this script never reads.)
(() => {
  const heading = document.getElementById("payment-state");
  if (heading === null) {
    return;
  }
  const shown = heading.dataset.state;
  const seconds = Number(heading.dataset.lookAgainSeconds) || 3;
  // The return page's address: this page may be shown at another (the recheck button's
  // answer, a POST, when its check was undone), and goes there once there is news.
  const address = heading.dataset.lookAt || window.location.href;

  async function look() {
    try {
      const answer = await fetch(address, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (answer.ok && (await answer.json()).state !== shown) {
        window.location.assign(address);
        return;
      }
    } catch {
      // The network or the service is down for now: look again later.
    }
    window.setTimeout(look, seconds * 1000);
  }

  window.setTimeout(look, seconds * 1000);
})();
