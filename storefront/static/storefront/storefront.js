/*
 * The demo storefront's events: on an item page, a view (and a click, when the page was reached from a
 * recommendation) on load, and add-to-cart / purchase on the buttons; on every card of a list, "not interested" (a
 * dismiss event: the item never comes back to this shopper, docs/events.md). Each is sent to POST /v1/events with
 * the recommendation's request_id so the platform can attribute it. The page's key has only the "events" scope
 * (see storefront/views.py).
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

  function event(type, extra, itemId) {
    var body = { item_id: itemId || config.itemId, type: type };
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
  if (config.itemId) {
    var onLoad = [];
    if (config.requestId) {
      var clickId = "sf-click-" + config.requestId + "-" + config.itemId;
      onLoad.push(event("click", clickId.length <= 100 ? { event_id: clickId } : {}));
    }
    onLoad.push(event("view"));
    send(onLoad)
      .then(function () { document.body.setAttribute("data-view-sent", "true"); })
      .catch(function () { document.body.setAttribute("data-view-sent", "failed"); });
  }

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

  // "Not interested": the card leaves the page once the platform has the dismiss event (the list it came from
  // named by its request_id); the next list leaves the item out.
  Array.prototype.forEach.call(document.querySelectorAll("button[data-dismiss]"), function (button) {
    button.addEventListener("click", function (clicked) {
      clicked.preventDefault();
      var card = button.closest("li.card");
      var list = button.closest("[data-request-id]");
      var itemId = button.getAttribute("data-dismiss");
      var title = card ? (card.querySelector(".card-title") || card).textContent.trim() : itemId;
      var extra = { event_id: "sf-" + randomId() };
      if (list && list.getAttribute("data-request-id")) extra.request_id = list.getAttribute("data-request-id");
      button.disabled = true;
      send([event("dismiss", extra, itemId)])
        .then(function () {
          if (card) card.remove();
          say("You will not see “" + title + "” again.");
          document.body.setAttribute("data-dismissed", itemId);
        })
        .catch(function (error) {
          button.disabled = false;
          say(error.message + " Please try again.");
        });
    });
  });
})();
