// Like the site's bot checks: report what the page sees of its browser, and whether a
// script not of the page reads its DOM (a caller without the page's URL in its stack).
const reportBrowser = (foreign) => navigator.sendBeacon("/__double/browser-check",
  JSON.stringify({webdriver: navigator.webdriver === true, agent: navigator.userAgent, foreign}));
reportBrowser(false);
{
  const query = Document.prototype.querySelector;
  let seen = false;
  Document.prototype.querySelector = function (selector) {
    const caller = (new Error().stack || "").split("\n")[2] || "";
    if (!seen && !caller.includes(location.origin)) { seen = true; reportBrowser(true); }
    return query.call(this, selector);
  };
}
