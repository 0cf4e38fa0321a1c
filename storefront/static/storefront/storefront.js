/*
 * The demo storefront's events: a view (and a click, when the page was reached from a recommendation) on load,
 * and add-to-cart / purchase on the buttons, each sent to POST /v1/events with the recommendation's request_id
 * so the platform can attribute it. The page's key has only the "events" scope (see storefront/views.py).
 */
(function () {
  "use strict";
  var configNode = document.getElementById("storefront-config");
  if (!configNode) return;
  var config = JSON.parse(configNode.textContent);
  var status = document.getElementById("event-status");

  function randomId() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function event(type, extra) {
    var body = { item_id: config.itemId, type: type };
    if (config.customerId) body.customer_id = config.customerId;
    if (config.sessionId) body.session_id = config.sessionId;
    if (config.requestId) body.request_id = config.requestId;
    return Object.assign(body, extra || {});
  }

  function send(events) {
    return fetch(config.eventsUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + config.key },
      body: JSON.stringify({ events: events }),
      keepalive: true,
      credentials: "omit",
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok || (body.rejected && body.rejected.length)) {
          throw new Error("The event was not accepted (" + response.status + ").");
        }
        return body;
      });
    });
  }

  function say(message, link) {
    if (!status) return;
    status.textContent = message + " ";
    if (link) {
      var anchor = document.createElement("a");
      anchor.href = link.href;
      anchor.id = link.id;
      anchor.textContent = link.text;
      status.appendChild(anchor);
    }
  }

  // On load: the click that brought us here (a fixed event_id, so a reload is a duplicate, not a second click),
  // then the view.
  var onLoad = [];
  if (config.requestId) {
    var clickId = "sf-click-" + config.requestId + "-" + config.itemId;
    onLoad.push(event("click", clickId.length <= 100 ? { event_id: clickId } : {}));
  }
  onLoad.push(event("view"));
  send(onLoad)
    .then(function () { document.body.setAttribute("data-view-sent", "true"); })
    .catch(function () { document.body.setAttribute("data-view-sent", "failed"); });

  var done = {
    add_to_cart: { message: "Added to your cart.", link: null },
    purchase: {
      message: "Thank you! Your purchase is recorded.",
      link: { href: "/", id: "see-new-recommendations", text: "See how your recommendations changed" },
    },
  };

  Array.prototype.forEach.call(document.querySelectorAll("button[data-event]"), function (button) {
    button.addEventListener("click", function () {
      var type = button.getAttribute("data-event");
      button.disabled = true;  // one press, one event
      say("Sending…");
      send([event(type, { event_id: "sf-" + randomId(), value: 1 })])
        .then(function () { say(done[type].message, done[type].link); })
        .catch(function (error) { say(error.message + " Please try again."); })
        .then(function () { button.disabled = false; });
    });
  });
})();
