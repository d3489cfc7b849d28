/*
 * indico's page: sign up or log in, optimize or backtest a portfolio, watch
 * its job over /ws/jobs (a backtest's progress as a bar; cancel it), see the
 * result's charts, keep and reopen saved results of both kinds.
 *
 * Rules this file keeps:
 * - every URL is relative ("../auth/login"), so the page works at /app/ and
 *   behind a proxy's prefix (/backend/app/);
 * - the session token lives in sessionStorage only (never a URL, never
 *   localStorage), and reaches /ws/jobs in the socket's first message;
 * - every value from the API goes into the page as text (textContent,
 *   createElement), never as HTML.
 */
"use strict";

(function () {
  const TOKEN_KEY = "indico.token";
  const EMAIL_KEY = "indico.email";
  const PAGE_SIZE = 5;
  const POLL_INTERVAL = 1000;
  const SUBSCRIBE_WAIT = 5000;
  const OBJECTIVE_NAMES = {
    max_sharpe: "Maximum Sharpe ratio",
    min_volatility: "Minimum volatility",
    efficient_return: "Minimum volatility for a target return",
    efficient_risk: "Maximum return for a target volatility",
    buy_and_hold_sharpe: "Buy-and-hold Sharpe ratio",
    risk_parity: "Risk parity",
    equal_weight: "Equal weights",
    hrp: "Hierarchical risk parity",
    min_cvar: "Minimum CVaR",
    inverse_volatility: "Inverse volatility",
    max_diversification: "Maximum diversification",
  };
  const STEPS = ["queued", "running", "done"];
  // The objectives that take maxAssets, and those that take groups (issue 13).
  const MAX_ASSETS_OBJECTIVES = ["max_sharpe", "min_volatility"];
  const GROUP_OBJECTIVES = ["max_sharpe", "min_volatility", "efficient_return", "efficient_risk",
                            "min_cvar"];
  const KIND_NAMES = {optimize: "Optimization", backtest: "Backtest"};
  const REBALANCE_NAMES = {monthly: "monthly", quarterly: "quarterly", yearly: "yearly"};

  const $ = (id) => document.getElementById(id);
  const percent = (value) => Number.isFinite(value) ? (value * 100).toFixed(2) + " %" : "–";
  const number = (value, digits) => Number.isFinite(value) ? value.toFixed(digits) : "–";
  const moneyFormat = new Intl.NumberFormat(undefined, {minimumFractionDigits: 2,
                                                         maximumFractionDigits: 2});
  const money = (value) => Number.isFinite(value) ? moneyFormat.format(value) : "–";

  function element(name, content, className) {
    const made = document.createElement(name);
    if (content !== undefined && content !== null) made.textContent = String(content);
    if (className) made.className = className;
    return made;
  }

  // ---- the API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.message ? String(body.message) : `the server answered ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  const session = {
    get token() { return sessionStorage.getItem(TOKEN_KEY); },
    get email() { return sessionStorage.getItem(EMAIL_KEY) || ""; },
    save(token, email) {
      sessionStorage.setItem(TOKEN_KEY, token);
      sessionStorage.setItem(EMAIL_KEY, email);
    },
    clear() {
      sessionStorage.removeItem(TOKEN_KEY);
      sessionStorage.removeItem(EMAIL_KEY);
    },
  };

  async function api(route, body, authenticated = true) {
    const headers = {"Content-Type": "application/json"};
    if (authenticated && session.token) headers.Authorization = "Bearer " + session.token;
    let response;
    try {
      response = await fetch("../" + route, {method: "POST", headers: headers,
                                             body: JSON.stringify(body || {}),
                                             credentials: "omit", cache: "no-store"});
    } catch (failure) {
      throw new ApiError(0, {type: "NetworkError",
                             message: "the server cannot be reached; is indico running?"});
    }
    let envelope = null;
    try {
      envelope = await response.json();
    } catch (failure) {
      envelope = null;
    }
    if (envelope === null || typeof envelope !== "object") {
      throw new ApiError(response.status, {type: "BadAnswer",
                                           message: `the server answered ${response.status}`});
    }
    if (response.ok) return envelope.data;
    const problem = new ApiError(response.status, envelope.error);
    if (response.status === 401 && authenticated) {
      endSession("Your session has ended; log in again.");
    }
    throw problem;
  }

  // ---- errors next to their fields ------------------------------------------

  function clearErrors(container) {
    for (const slot of container.querySelectorAll(".error[data-field]")) slot.textContent = "";
    for (const input of container.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
    }
  }

  /* Show an API error in `container`: each problem next to the field it names
     (the envelope's `field`, or each of `errors`), the rest in the form's own slot. */
  function showError(container, problem) {
    clearErrors(container);
    const body = problem.body || {};
    const items = Array.isArray(body.errors) && body.errors.length
      ? body.errors.map((item) => ({field: item.field, message: `${item.field}: ${item.message}`}))
      : [{field: body.field, group: body.group, message: problem.message}];
    let first = null;
    for (const item of items) {
      const slot = slotOf(container, item.field, item.group);
      slot.textContent = slot.textContent ? slot.textContent + " " + item.message : item.message;
      for (const described of container.querySelectorAll("[aria-describedby]")) {
        if (!slot.id || !described.getAttribute("aria-describedby").split(" ").includes(slot.id)) {
          continue;
        }
        // A fieldset described by the slot (bounds, a group) marks every input in it.
        const inputs = described.tagName === "FIELDSET"
          ? described.querySelectorAll("input, select") : [described];
        for (const input of inputs) {
          input.setAttribute("aria-invalid", "true");
          first = first || input;
        }
      }
    }
    if (first && !first.disabled) first.focus();
  }

  /* The error slot of `field` ("groups.1.min"): the slot of its longest prefix
     ("groups.1.min", "groups.1", "groups"), else the container's own slot. An
     error about one group (the envelope's `group`, with field "groups") goes to
     the slot of the row sent with that name (data-group). */
  function slotOf(container, field, group) {
    if (typeof group === "string" && typeof field === "string") {
      for (const slot of container.querySelectorAll(".error[data-group]")) {
        if (slot.dataset.group === group && slot.dataset.field.startsWith(field + ".")) {
          return slot;
        }
      }
    }
    const parts = typeof field === "string" && field ? field.split(".") : [];
    for (let length = parts.length; length > 0; length -= 1) {
      const name = parts.slice(0, length).join(".");
      const slot = container.querySelector(`.error[data-field="${CSS.escape(name)}"]`);
      if (slot) return slot;
    }
    return container.querySelector('.error[data-field=""]');
  }

  function notice(message) {
    $("notice").textContent = message;
    $("notice").hidden = !message;
  }

  // ---- signing in and out ---------------------------------------------------

  function showSignedOut() {
    $("who").hidden = true;
    $("auth-section").hidden = false;
    for (const id of ["optimize-section", "progress-section", "result-section",
                      "backtest-section", "saved-section"]) {
      $(id).hidden = true;
    }
    $("result-section").dataset.id = "";
    $("backtest-section").dataset.id = "";
  }

  async function showSignedIn() {
    $("who-email").textContent = session.email;
    $("who").hidden = false;
    $("auth-section").hidden = true;
    $("optimize-section").hidden = false;
    $("saved-section").hidden = false;
    events.connect();
    await Promise.all([symbols.load(), saved.load(null)]);
  }

  function endSession(message) {
    session.clear();
    events.close();
    jobs.stop();
    showSignedOut();
    notice(message);
  }

  async function onAuthSubmit(event) {
    event.preventDefault();
    const form = $("auth-form");
    const action = event.submitter && event.submitter.dataset.action === "signup"
      ? "signup" : "login";
    const body = {email: $("auth-email").value.trim(), password: $("auth-password").value};
    const name = $("auth-name").value.trim();
    if (action === "signup" && name) body.name = name;
    clearErrors(form);
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    try {
      const data = await api("auth/" + action, body, false);
      session.save(data.token, data.user.email);
      $("auth-password").value = "";
      notice(action === "signup" ? "Welcome! Your account is ready." : "");
      await showSignedIn();
      $("symbol-input").focus();
    } catch (problem) {
      showError(form, problem);
    } finally {
      for (const button of form.querySelectorAll("button")) button.disabled = false;
    }
  }

  async function onLogout() {
    try {
      await api("auth/logout", {});
    } catch (problem) {
      // Logged out either way: the token is forgotten below.
    }
    endSession("You are logged out.");
    $("auth-email").focus();
  }

  // ---- symbols and their dates ------------------------------------------------

  const symbols = {
    catalog: new Map(),
    chosen: [],
    datesTouched: false,

    async load() {
      try {
        const data = await api("prices/symbols", {});
        this.catalog = new Map(data.symbols.map((entry) => [entry.symbol, entry]));
      } catch (problem) {
        if (problem.status !== 401) showError($("optimize-form"), problem);
        return;
      }
      const options = $("symbol-options");
      options.replaceChildren();
      for (const entry of this.catalog.values()) {
        const option = element("option", `${entry.first} to ${entry.last}`);
        option.value = entry.symbol;
        options.appendChild(option);
      }
      this.render();
    },

    add(text) {
      for (const name of text.toUpperCase().split(/[\s,;]+/)) {
        if (name && !this.chosen.includes(name)) this.chosen.push(name);
      }
      this.render();
    },

    remove(name) {
      this.chosen = this.chosen.filter((other) => other !== name);
      this.render();
    },

    render() {
      const list = $("symbol-chips");
      list.replaceChildren();
      for (const name of this.chosen) {
        const entry = this.catalog.get(name);
        const item = element("li");
        item.appendChild(element("span", name));
        item.appendChild(element("span", entry ? `${entry.first} to ${entry.last}`
                                               : "no stored prices", "dates"));
        const remove = element("button", "×");
        remove.type = "button";
        remove.className = "secondary";
        remove.setAttribute("aria-label", "Remove " + name);
        remove.addEventListener("click", () => {
          this.remove(name);
          $("symbol-input").focus();
        });
        item.appendChild(remove);
        list.appendChild(item);
      }
      this.applySharedRange();
      groups.offer(this.chosen);
    },

    // The dates every chosen symbol has: the latest first date to the earliest last one.
    applySharedRange() {
      const known = this.chosen.map((name) => this.catalog.get(name)).filter(Boolean);
      const help = $("symbols-help");
      const start = $("start-date");
      const end = $("end-date");
      if (!known.length) {
        help.textContent = this.catalog.size
          ? `${this.catalog.size} symbols have prices; pick from the suggestions.` : "";
        start.min = end.min = start.max = end.max = "";
        return;
      }
      const first = known.map((entry) => entry.first).sort().pop();
      const last = known.map((entry) => entry.last).sort()[0];
      if (first > last) {
        help.textContent = "These symbols share no dates.";
        return;
      }
      help.textContent = known.length === 1
        ? `Prices from ${first} to ${last}.`
        : `These ${known.length} symbols share prices from ${first} to ${last}.`;
      start.min = end.min = first;
      start.max = end.max = last;
      if (!this.datesTouched) {
        start.value = first;
        end.value = last;
      }
    },
  };

  function onSymbolKey(event) {
    if (event.key === "Enter" && $("symbol-input").value.trim()) {
      event.preventDefault();
      addTypedSymbols();
    }
  }

  function addTypedSymbols() {
    symbols.add($("symbol-input").value);
    $("symbol-input").value = "";
  }

  // ---- groups: sector constraints, rows of name, symbols, least and most total -----

  const groups = {
    rows: [], // {root, name, least, most, boxes: Map(symbol, checkbox)}
    offered: [],

    add() {
      const root = element("fieldset", null, "group-row");
      const legend = element("legend");
      const name = this.input("text", "Group");
      const least = this.input("number", "Total at least", {min: 0, max: 1, step: "any",
                                                            value: "0", inputmode: "decimal"});
      const most = this.input("number", "Total at most", {min: 0, max: 1, step: "any",
                                                         value: "1", inputmode: "decimal"});
      const choices = element("div", null, "group-symbols");
      choices.setAttribute("role", "group");
      const remove = element("button", "Remove", "secondary");
      remove.type = "button";
      const slot = element("p", null, "error");
      const totals = element("div", null, "pair");
      totals.append(least.field, most.field);
      root.append(legend, name.field, choices, totals, remove, slot);
      const row = {root: root, legend: legend, name: name.input, least: least.input,
                   most: most.input, choices: choices, remove: remove, slot: slot,
                   boxes: new Map()};
      remove.addEventListener("click", () => this.remove(row));
      this.rows.push(row);
      $("group-rows").appendChild(root);
      this.offer(this.offered);
      this.renumber();
      name.input.focus();
    },

    // A labelled input in its .field div.
    input(type, label, attributes) {
      const field = element("div", null, "field");
      const input = element("input");
      input.type = type;
      input.id = "group-input-" + (++groupInputs);
      for (const [key, value] of Object.entries(attributes || {})) input.setAttribute(key, value);
      const text = element("label", label);
      text.htmlFor = input.id;
      field.append(text, input);
      return {field: field, input: input};
    },

    remove(row) {
      row.root.remove();
      this.rows = this.rows.filter((other) => other !== row);
      this.renumber();
      $("group-add").focus();
    },

    // Legends, names and error slots follow the rows' order: the API names groups.<index>.
    renumber() {
      this.rows.forEach((row, index) => {
        row.legend.textContent = `Group ${index + 1}`;
        row.choices.setAttribute("aria-label", `Symbols of group ${index + 1}`);
        row.remove.setAttribute("aria-label", `Remove group ${index + 1}`);
        row.slot.id = `group-${index}-error`;
        row.slot.dataset.field = `groups.${index}`;
        row.root.setAttribute("aria-describedby", row.slot.id);
      });
      $("groups-empty").hidden = this.rows.length > 0;
    },

    // A checkbox per chosen symbol in every row, keeping the ticks of those still chosen.
    offer(chosen) {
      this.offered = chosen.slice();
      for (const row of this.rows) {
        const boxes = new Map();
        row.choices.replaceChildren();
        for (const symbol of this.offered) {
          const box = row.boxes.get(symbol) || element("input");
          box.type = "checkbox";
          box.value = symbol;
          const label = element("label", null, "check");
          label.append(box, document.createTextNode(symbol));
          row.choices.appendChild(label);
          boxes.set(symbol, box);
        }
        row.boxes = boxes;
        if (!this.offered.length) {
          row.choices.appendChild(element("span", "Choose symbols first.", "hint"));
        }
      }
    },

    // The rows as the API takes them; each row's slot remembers the name it was sent with.
    request() {
      return this.rows.map((row) => {
        row.slot.dataset.group = row.name.value.trim();
        return {
          name: row.slot.dataset.group,
          symbols: [...row.boxes.values()].filter((box) => box.checked).map((box) => box.value),
          min: numberOrNull(row.least),
          max: numberOrNull(row.most),
        };
      });
    },
  };
  let groupInputs = 0;

  // ---- the optimization and backtest requests -----------------------------------

  // The number in an input (given by id, or the input itself), null when empty.
  function numberOrNull(input) {
    const text = (typeof input === "string" ? $(input) : input).value.trim();
    return text === "" ? null : Number(text);
  }

  function onObjectiveChange() {
    const objective = $("objective").value;
    $("target-return-field").hidden = objective !== "efficient_return";
    $("target-volatility-field").hidden = objective !== "efficient_risk";
    $("max-assets-field").hidden = !MAX_ASSETS_OBJECTIVES.includes(objective);
    $("groups-field").hidden = !GROUP_OBJECTIVES.includes(objective);
  }

  function onRebalanceChange() {
    $("rebalance-days-field").hidden = $("rebalance").value !== "days";
  }

  function onModelChange() {
    $("returns-span-field").hidden = $("returns-model").value !== "ema";
    $("risk-span-field").hidden = $("risk-model").value !== "exp_cov";
  }

  function optimizeRequest() {
    const objective = $("objective").value;
    const body = {
      symbols: symbols.chosen.slice(),
      startDate: $("start-date").value,
      endDate: $("end-date").value,
      initialInvestment: numberOrNull("investment"),
      objective: objective,
      weightBounds: [numberOrNull("bound-low"), numberOrNull("bound-high")],
      wait: false,
    };
    const rate = numberOrNull("risk-free-rate");
    if (rate !== null) body.riskFreeRate = rate;
    if (objective === "efficient_return") body.targetReturn = numberOrNull("target-return");
    if (objective === "efficient_risk") body.targetVolatility = numberOrNull("target-volatility");
    body.returnsModel = $("returns-model").value;
    body.riskModel = $("risk-model").value;
    if (body.returnsModel === "ema") body.returnsSpan = numberOrNull("returns-span");
    if (body.riskModel === "exp_cov") body.riskSpan = numberOrNull("risk-span");
    const level = numberOrNull("cvar-level");
    if (level !== null) body.cvarLevel = level;
    // Hidden choices are not sent: they do not apply to the chosen objective.
    const most = numberOrNull("max-assets");
    if (MAX_ASSETS_OBJECTIVES.includes(objective) && most !== null) body.maxAssets = most;
    if (GROUP_OBJECTIVES.includes(objective) && groups.rows.length) {
      body.groups = groups.request();
    }
    return body;
  }

  // optimize's body (without `wait`: a backtest always answers 202) and its own three.
  function backtestRequest() {
    const body = optimizeRequest();
    delete body.wait;
    body.lookbackDays = numberOrNull("lookback-days");
    body.rebalance = $("rebalance").value === "days" ? numberOrNull("rebalance-days")
      : $("rebalance").value;
    body.costBps = numberOrNull("cost-bps");
    return body;
  }

  // The form's two buttons: Optimize (also Enter) and Run backtest.
  async function onOptimize(event) {
    event.preventDefault();
    const form = $("optimize-form");
    const kind = event.submitter && event.submitter.dataset.action === "backtest"
      ? "backtest" : "optimize";
    if ($("symbol-input").value.trim()) addTypedSymbols();
    clearErrors(form);
    const buttons = [$("optimize"), $("backtest")];
    for (const button of buttons) button.disabled = true;
    try {
      await events.ready();
      const body = kind === "backtest" ? backtestRequest() : optimizeRequest();
      const data = await api("portfolio/" + kind, body);
      jobs.follow(data.id, data.status, kind);
    } catch (problem) {
      showError(form, problem);
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  }

  // ---- live progress: /ws/jobs, or polling when the socket is not there -----------

  const events = {
    socket: null,
    subscribed: false,
    waiters: [],
    retry: null,

    connect() {
      if (this.socket || !session.token) return;
      const url = new URL("../ws/jobs", window.location.href);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(url.href);
      this.socket = socket;
      socket.addEventListener("open", () => {
        socket.send(JSON.stringify({token: session.token}));
      });
      socket.addEventListener("message", (message) => {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (failure) {
          return;
        }
        if (event.event === "subscribed") {
          this.subscribed = true;
          this.wake();
        } else {
          jobs.onEvent(event);
        }
      });
      socket.addEventListener("close", (closed) => {
        if (this.socket !== socket) return;
        this.socket = null;
        this.subscribed = false;
        this.wake();
        jobs.socketLost();
        // 4401: the token was refused; anything else (a restart, a proxy) is retried.
        if (closed.code !== 4401 && session.token) {
          this.retry = setTimeout(() => this.connect(), 2000);
        }
      });
    },

    wake() {
      for (const resolve of this.waiters.splice(0)) resolve();
    },

    // Resolves once subscribed, or after SUBSCRIBE_WAIT (then jobs are polled).
    ready() {
      if (this.subscribed || !this.socket) return Promise.resolve();
      return new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, SUBSCRIBE_WAIT);
      });
    },

    close() {
      clearTimeout(this.retry);
      const socket = this.socket;
      this.socket = null;
      this.subscribed = false;
      this.wake();
      if (socket) socket.close(1000, "logged out");
    },
  };

  const jobs = {
    current: null,
    kind: "optimize",
    early: new Map(), // events that arrived before the 202 told their job's id
    poller: null,

    follow(id, status, kind) {
      this.stop();
      this.current = id;
      this.kind = kind === "backtest" ? "backtest" : "optimize";
      $("progress-section").hidden = false;
      $("progress-log").replaceChildren();
      this.reset();
      this.mark(status, null);
      $("progress-message").textContent = this.kind === "backtest" ? "Backtesting…"
        : "Optimizing…";
      $("backtest-progress-field").hidden = this.kind !== "backtest";
      $("cancel").hidden = status === "done" || status === "failed";
      for (const event of this.early.get(id) || []) this.onEvent(event);
      this.early.clear();
      if (status === "done" || status === "failed") {
        this.finish(id);
      } else if (!events.subscribed) {
        this.poll();
      }
    },

    onEvent(event) {
      if (!event || typeof event.id !== "string") return;
      if (event.id !== this.current) {
        if (!this.early.has(event.id)) this.early.set(event.id, []);
        this.early.get(event.id).push(event);
        return;
      }
      if (event.event === "progress") {
        // One per rebalance or chunk of them: the bar shows them, the log does not.
        this.mark("running", null);
        this.progress(event.done, event.total);
        return;
      }
      this.log(event.event, event.at);
      this.mark(event.event, event.error);
      if (event.event === "done" || event.event === "failed") this.finish(event.id);
    },

    socketLost() {
      if (this.current && !this.poller) this.poll();
    },

    poll() {
      clearTimeout(this.poller);
      this.poller = setTimeout(async () => {
        this.poller = null;
        const id = this.current;
        if (!id) return;
        try {
          const result = await api("portfolio/result", {id: id});
          if (id !== this.current) return;
          this.mark(result.status, result.error);
          if (result.progress) this.progress(result.progress.done, result.progress.total);
          if (result.status === "done" || result.status === "failed") {
            this.finish(id, result);
            return;
          }
        } catch (problem) {
          if (problem.status === 401) return;
        }
        if (!events.subscribed) this.poll();
      }, POLL_INTERVAL);
    },

    log(name, at) {
      // `at` is in seconds since the epoch (as the server's clock stamped it).
      const when = typeof at === "number" ? new Date(at * 1000)
        : typeof at === "string" ? new Date(at) : new Date();
      const time = Number.isNaN(when.getTime()) ? "" : " at " + when.toLocaleTimeString();
      $("progress-log").appendChild(element("li", name + time));
    },

    // The bar moves forward only: k of n rebalances optimized.
    progress(done, total) {
      if (!Number.isInteger(done) || !Number.isInteger(total) || total < 1) return;
      const bar = $("backtest-progress");
      const value = Math.min(total, Math.max(done, bar.max === total ? bar.value : 0));
      bar.max = total;
      bar.value = value;
      $("backtest-progress-text").textContent = `${value} of ${total} rebalances`;
    },

    async cancel() {
      const id = this.current;
      if (!id) return;
      $("cancel").disabled = true;
      try {
        await api("portfolio/cancel", {id: id});
        if (id === this.current) $("progress-message").textContent = "Cancelling…";
      } catch (problem) {
        if (problem.status !== 401 && id === this.current) {
          $("progress-message").textContent = problem.message;
        }
      } finally {
        $("cancel").disabled = false;
      }
    },

    reset() {
      const bar = $("backtest-progress");
      bar.max = 1;
      bar.value = 0;
      $("backtest-progress-text").textContent = "";
      for (const item of $("steps").children) {
        item.classList.remove("reached", "failed");
        item.removeAttribute("aria-current");
      }
      $("steps").lastElementChild.textContent = "done";
      const message = $("progress-message");
      message.classList.remove("failed");
      message.textContent = "";
    },

    // Steps only move forward within a job: a late "queued" does not undo "running".
    mark(status, problem) {
      const last = $("steps").lastElementChild;
      if (status === "failed") {
        last.textContent = "failed";
        last.classList.add("failed");
        const message = $("progress-message");
        message.classList.add("failed");
        message.textContent = `The ${this.kind === "backtest" ? "backtest" : "optimization"} `
          + "failed: " + describeJobError(problem);
        $("cancel").hidden = true;
        return;
      }
      const reached = STEPS.indexOf(status);
      if (reached < 0) return;
      for (const item of $("steps").children) {
        const index = STEPS.indexOf(item.dataset.step);
        if (index <= reached) item.classList.add("reached");
        item.removeAttribute("aria-current");
      }
      $("steps").querySelectorAll(".reached").forEach((item, index, all) => {
        if (index === all.length - 1) item.setAttribute("aria-current", "step");
      });
    },

    async finish(id, known) {
      this.stop();
      this.current = null;
      try {
        const result = known || await api("portfolio/result", {id: id});
        if (result.status === "failed") {
          this.mark("failed", result.error);
        } else {
          $("progress-message").textContent = "Done.";
          show(result);
        }
        await saved.load(null);
      } catch (problem) {
        if (problem.status !== 401) {
          const message = $("progress-message");
          message.classList.add("failed");
          message.textContent = problem.message;
        }
      }
    },

    stop() {
      clearTimeout(this.poller);
      this.poller = null;
      this.current = null;
      $("cancel").hidden = true;
    },
  };

  function describeJobError(problem) {
    if (!problem) return "no reason was given.";
    if (typeof problem === "string") return problem;
    return String(problem.message || problem.type || "no reason was given.");
  }

  // ---- the result ----------------------------------------------------------------

  function row(cells, header) {
    const tr = element("tr");
    cells.forEach((cell, index) => {
      const td = element(index === 0 && header ? "th" : "td", cell);
      if (index === 0 && header) td.scope = "row";
      tr.appendChild(td);
    });
    return tr;
  }

  function drawdowns(values) {
    let peak = -Infinity;
    return values.map((value) => {
      peak = Math.max(peak, value);
      return peak > 0 ? value / peak - 1 : 0;
    });
  }

  let shown = null;
  let redraw = null;

  // Charts are drawn at their container's width: draw them again when it changes.
  function onResize() {
    clearTimeout(redraw);
    redraw = setTimeout(() => {
      if (shown && !$("result-section").hidden) drawCharts(shown);
      if (shownBacktest && !$("backtest-section").hidden) drawBacktestChart(shownBacktest);
    }, 200);
  }

  // A finished job's view: a backtest's, or an optimization's (older results have no kind).
  function show(result) {
    if (result.kind === "backtest") {
      showBacktest(result);
    } else {
      showResult(result);
    }
  }

  function showResult(result) {
    shown = result;
    $("backtest-section").hidden = true;
    const section = $("result-section");
    section.hidden = false;
    section.dataset.id = result.id;
    const params = result.params || {};
    const names = Object.keys(result.allocations || {});
    $("result-summary").textContent = [
      OBJECTIVE_NAMES[result.objective] || result.objective,
      names.join(", "),
      `${params.start_date} to ${params.end_date}`,
      `investment ${money(params.initial_investment)}`,
      result.created ? "saved " + new Date(result.created).toLocaleString() : "",
    ].filter(Boolean).join(" · ");

    const weights = sortedWeights(result);
    const body = $("weights-table").tBodies[0];
    body.replaceChildren();
    for (const weight of weights) {
      body.appendChild(row([weight.label, percent(weight.value),
                            String((result.shares || {})[weight.label] ?? "–"),
                            percent(((result.stats || {}).risk_contributions || {})[weight.label])],
                           true));
    }
    $("leftover").textContent = money(result.leftover);
    showGroups(params.groups, result.allocations || {});

    const stats = result.stats || {};
    const statsBody = $("stats-table").tBodies[0];
    statsBody.replaceChildren(
      row(["Expected return (a year)", percent(stats.expected_return)], true),
      row(["Volatility (a year)", percent(stats.volatility)], true),
      row(["Sharpe ratio", number(stats.sharpe, 3)], true),
      row([`CVaR at ${params.cvar_level ?? 0.95} (a day)`, percent(stats.cvar)], true));
    // maxAssets: whether the solver proved its answer optimal, and the bound on the gap.
    if (typeof stats.optimal === "boolean") {
      statsBody.appendChild(row([`At most ${params.max_assets ?? "?"} assets`,
                                 stats.optimal ? "proven optimal"
                                   : "not proven optimal (time limit)"], true));
      statsBody.appendChild(row(["Optimality gap (at most, relative)", gapText(stats.gap)],
                                true));
    }

    const performance = result.performance || {};
    const portfolio = performance.portfolio || {};
    const index = performance.benchmark || {};
    const performanceBody = $("performance-table").tBodies[0];
    performanceBody.replaceChildren(...[
      ["Cumulative return", "cumulative_return", percent],
      ["Mean daily return", "mean_daily_return", percent],
      ["Daily standard deviation", "std_daily_return", percent],
      ["Sharpe ratio", "sharpe", (v) => number(v, 3)],
      ["Maximum drawdown", "max_drawdown", percent],
      ["Final value", "final_value", money],
    ].map(([label, key, format]) => row([label, format(portfolio[key]), format(index[key])],
                                        true)));

    drawCharts(result);
    loadFrontier(result);
    $("result-title").focus();
  }

  // The relative bound on how far the best portfolio may be from the one found
  // (indico.optimization.cardinality): 0 when proven optimal.
  function gapText(gap) {
    if (!Number.isFinite(gap)) return "–";
    return gap === 0 ? "0 %" : (gap * 100).toPrecision(3) + " %";
  }

  // The result's groups, each with the total weight the result gives its symbols.
  function showGroups(list, allocations) {
    const body = $("groups-table").tBodies[0];
    body.replaceChildren();
    $("groups-result").hidden = !Array.isArray(list) || !list.length;
    for (const group of Array.isArray(list) ? list : []) {
      const members = Array.isArray(group.symbols) ? group.symbols : [];
      const total = members.reduce((sum, symbol) => sum + (allocations[symbol] || 0), 0);
      body.appendChild(row([group.name, members.join(", "),
                            `${percent(group.min)} to ${percent(group.max)}`, percent(total)],
                           true));
    }
  }

  // The frontier of the shown result's symbols, dates, bounds and estimators: asked
  // for when a result is shown (portfolio/frontier saves nothing), drawn if the
  // result is still the one shown when it comes.
  let frontierShown = null;

  async function loadFrontier(result) {
    const params = result.params || {};
    frontierShown = null;
    const chart = $("frontier-chart");
    chart.replaceChildren(element("p", "Computing the efficient frontier…", "hint"));
    let curve;
    try {
      curve = await api("portfolio/frontier", {
        symbols: params.symbols, start_date: params.start_date, end_date: params.end_date,
        risk_free_rate: params.risk_free_rate, weight_bounds: params.weight_bounds,
        returns_model: params.returns_model, returns_span: params.returns_span,
        risk_model: params.risk_model, risk_span: params.risk_span, points: 50,
        ...(Array.isArray(params.groups) && params.groups.length ? {groups: params.groups} : {}),
      });
    } catch (problem) {
      if (shown === result) {
        chart.replaceChildren(element("p", "No frontier: " + problem.message, "hint"));
      }
      return;
    }
    if (shown !== result) return;
    frontierShown = {result: result, curve: curve};
    drawFrontier();
  }

  function drawFrontier() {
    if (!frontierShown || frontierShown.result !== shown) return;
    const stats = shown.stats || {};
    const chosen = Number.isFinite(stats.volatility) && Number.isFinite(stats.expected_return)
      ? stats : null;
    window.IndicoCharts.frontier($("frontier-chart"), frontierShown.curve, chosen,
                                 "Efficient frontier: expected return against volatility, "
                                 + "with this result marked");
  }

  function sortedWeights(result) {
    return Object.keys(result.allocations || {})
      .map((name) => ({label: name, value: result.allocations[name]}))
      .sort((a, b) => b.value - a.value);
  }

  function drawCharts(result) {
    const weights = sortedWeights(result);
    window.IndicoCharts.bars($("allocation-chart"), weights, percent,
                             "Allocation: " + weights.map((w) => `${w.label} ${percent(w.value)}`)
                               .join(", "));
    const series = (result.performance || {}).series;
    const charts = ["value-chart", "drawdown-chart"];
    if (series && Array.isArray(series.dates) && series.dates.length > 1) {
      window.IndicoCharts.lines($("value-chart"), series.dates, [
        {name: "Portfolio", values: series.portfolio, className: "portfolio"},
        {name: "Index", values: series.benchmark, className: "index"},
      ], (v) => moneyFormat.format(v).replace(/\.\d+$/, ""),
      "Value of the portfolio and of the index over time");
      window.IndicoCharts.lines($("drawdown-chart"), series.dates, [
        {name: "Portfolio", values: drawdowns(series.portfolio), className: "drawdown",
         area: true},
        {name: "Index", values: drawdowns(series.benchmark), className: "index"},
      ], (v) => (v * 100).toFixed(0) + " %", "Drawdown of the portfolio and of the index");
    } else {
      for (const id of charts) $(id).replaceChildren(element("p", "No chart series.", "hint"));
    }
    drawFrontier();
  }

  // ---- a backtest: its chart, statistics and rebalances --------------------------------

  let shownBacktest = null;
  const BACKTEST_STATS = [
    ["Total return", "total_return", percent],
    ["Compound annual growth", "cagr", percent],
    ["Volatility (a year)", "volatility", percent],
    ["Sharpe ratio", "sharpe", (v) => number(v, 3)],
    ["Sortino ratio", "sortino", (v) => number(v, 3)],
    ["Maximum drawdown", "max_drawdown", percent],
    ["Calmar ratio", "calmar", (v) => number(v, 3)],
    ["Turnover (a year)", "turnover", percent],
    ["Costs (total)", "costs", money],
  ];

  function rebalanceText(rebalance) {
    if (Number.isInteger(rebalance)) return `every ${rebalance} trading days`;
    return REBALANCE_NAMES[rebalance] || String(rebalance ?? "");
  }

  function showBacktest(result) {
    shownBacktest = result;
    $("result-section").hidden = true;
    const section = $("backtest-section");
    section.hidden = false;
    section.dataset.id = result.id;
    const params = result.params || {};
    $("backtest-summary").textContent = [
      OBJECTIVE_NAMES[params.objective] || params.objective,
      (params.symbols || []).join(", "),
      `${params.start_date} to ${params.end_date}`,
      `investment ${money(params.initial_investment)}`,
      `rebalanced ${rebalanceText(params.rebalance)} on ${params.lookback_days} trading days`,
      `costs ${params.cost_bps} bp`,
      result.created ? "saved " + new Date(result.created).toLocaleString() : "",
    ].filter(Boolean).join(" · ");

    const stats = result.stats || {};
    const strategy = stats.strategy || {};
    const equal = stats.equal_weight || {};
    $("backtest-stats").tBodies[0].replaceChildren(...BACKTEST_STATS.map(
      ([label, key, format]) => row([label, format(strategy[key]), format(equal[key])], true)));

    const body = $("rebalances-table").tBodies[0];
    body.replaceChildren();
    (result.rebalances || []).forEach((rebalance, index) => {
      const line = row([rebalance.date, percent(rebalance.turnover), money(rebalance.cost), ""],
                       true);
      const detail = element("tr", null, "weights-row");
      detail.hidden = true;
      detail.id = `rebalance-${index}-weights`;
      const cell = element("td");
      cell.colSpan = 4;
      detail.appendChild(cell);
      const toggle = element("button", "Show", "secondary");
      toggle.type = "button";
      toggle.setAttribute("aria-expanded", "false");
      toggle.setAttribute("aria-controls", detail.id);
      toggle.setAttribute("aria-label", `Weights chosen on ${rebalance.date}`);
      toggle.addEventListener("click", () => {
        if (!cell.firstChild) cell.appendChild(weightsList(rebalance.weights || {}));
        detail.hidden = !detail.hidden;
        toggle.textContent = detail.hidden ? "Show" : "Hide";
        toggle.setAttribute("aria-expanded", String(!detail.hidden));
      });
      line.lastElementChild.appendChild(toggle);
      body.append(line, detail);
    });

    drawBacktestChart(result);
    $("backtest-title").focus();
  }

  // The weights of one rebalance, largest first, as text.
  function weightsList(weights) {
    const list = element("ul", null, "weights");
    Object.keys(weights).sort((a, b) => weights[b] - weights[a]).forEach((symbol) => {
      list.appendChild(element("li", `${symbol} ${percent(weights[symbol])}`));
    });
    return list;
  }

  function drawBacktestChart(result) {
    const series = result.series || {};
    const chart = $("backtest-chart");
    if (!Array.isArray(series.dates) || series.dates.length < 2) {
      chart.replaceChildren(element("p", "No chart series.", "hint"));
      return;
    }
    const lines = [
      {name: "Strategy", values: series.strategy, className: "strategy"},
      {name: "Equal weight", values: series.equal_weight, className: "equal"},
      {name: "Index", values: series.index, className: "index"},
    ].filter((line) => Array.isArray(line.values));
    window.IndicoCharts.lines(chart, series.dates, lines,
                              (v) => moneyFormat.format(v).replace(/\.\d+$/, ""),
                              "Value of the strategy, of equal weights and of the index over "
                              + "time");
  }

  // ---- saved results ---------------------------------------------------------------

  const saved = {
    cursors: [null], // the cursor of each page seen, newest first
    page: 0,
    next: null,

    async load(cursor) {
      if (cursor === null) {
        this.cursors = [null];
        this.page = 0;
      }
      const slot = $("saved-error");
      slot.textContent = "";
      let data;
      try {
        data = await api("portfolio/list", {limit: PAGE_SIZE,
                                             ...(this.cursors[this.page] ? {cursor: this.cursors[this.page]} : {})});
      } catch (problem) {
        if (problem.status !== 401) slot.textContent = problem.message;
        return;
      }
      if (!data.results.length && this.page > 0) {
        this.page -= 1;
        return this.load(undefined);
      }
      this.next = data.cursor;
      const list = $("saved-list");
      list.replaceChildren();
      for (const result of data.results) list.appendChild(this.item(result));
      $("saved-empty").hidden = data.results.length > 0;
      $("saved-newer").disabled = this.page === 0;
      $("saved-older").disabled = !this.next;
    },

    item(result) {
      const params = result.params || {};
      const symbolsText = (params.symbols || Object.keys(result.allocations || {})).join(", ");
      const when = result.created ? new Date(result.created).toLocaleString() : "";
      const objective = result.objective || params.objective;
      const kind = KIND_NAMES[result.kind] || KIND_NAMES.optimize;
      const item = element("li");
      item.dataset.id = result.id;
      item.dataset.kind = result.kind || "optimize";
      const what = element("div", null, "what");
      what.appendChild(element("strong", symbolsText));
      what.appendChild(document.createTextNode(
        ` · ${kind} · ${OBJECTIVE_NAMES[objective] || objective} · ${result.status}`));
      what.appendChild(element("span", `${params.start_date} to ${params.end_date} · saved ${when}`,
                               "when"));
      item.appendChild(what);
      const buttons = element("div", null, "buttons");
      const open = element("button", "Open", "secondary");
      open.type = "button";
      open.setAttribute("aria-label", `Open the result for ${symbolsText} saved ${when}`);
      open.addEventListener("click", () => this.open(result.id));
      const remove = element("button", "Delete", "secondary");
      remove.type = "button";
      remove.setAttribute("aria-label", `Delete the result for ${symbolsText} saved ${when}`);
      remove.addEventListener("click", () => this.remove(result.id));
      buttons.append(open, remove);
      item.appendChild(buttons);
      return item;
    },

    async open(id) {
      try {
        const result = await api("portfolio/result", {id: id});
        if (result.status === "failed") {
          jobs.stop();
          jobs.kind = result.kind === "backtest" ? "backtest" : "optimize";
          $("progress-section").hidden = false;
          $("backtest-progress-field").hidden = true;
          $("progress-log").replaceChildren();
          jobs.reset();
          jobs.mark("failed", result.error);
          $("result-section").hidden = true;
          $("backtest-section").hidden = true;
        } else if (result.status === "done") {
          show(result);
        } else {
          jobs.follow(result.id, result.status, result.kind);
        }
      } catch (problem) {
        if (problem.status !== 401) $("saved-error").textContent = problem.message;
      }
    },

    async remove(id) {
      try {
        await api("portfolio/delete", {id: id});
      } catch (problem) {
        if (problem.status !== 401) $("saved-error").textContent = problem.message;
        return;
      }
      for (const section of [$("result-section"), $("backtest-section")]) {
        if (section.dataset.id === id) {
          section.hidden = true;
          section.dataset.id = "";
        }
      }
      notice("The result was deleted.");
      await this.load(undefined);
      $("saved-title").focus();
    },

    older() {
      if (!this.next) return;
      this.cursors[this.page + 1] = this.next;
      this.page += 1;
      this.load(undefined);
    },

    newer() {
      if (this.page === 0) return;
      this.page -= 1;
      this.load(undefined);
    },
  };

  // ---- start -----------------------------------------------------------------------

  async function start() {
    $("auth-form").addEventListener("submit", onAuthSubmit);
    $("logout").addEventListener("click", onLogout);
    $("optimize-form").addEventListener("submit", onOptimize);
    $("symbol-input").addEventListener("keydown", onSymbolKey);
    $("symbol-add").addEventListener("click", () => {
      addTypedSymbols();
      $("symbol-input").focus();
    });
    $("objective").addEventListener("change", onObjectiveChange);
    $("rebalance").addEventListener("change", onRebalanceChange);
    $("group-add").addEventListener("click", () => groups.add());
    $("cancel").addEventListener("click", () => jobs.cancel());
    $("returns-model").addEventListener("change", onModelChange);
    $("risk-model").addEventListener("change", onModelChange);
    for (const id of ["start-date", "end-date"]) {
      $(id).addEventListener("input", () => { symbols.datesTouched = true; });
    }
    $("saved-older").addEventListener("click", () => saved.older());
    $("saved-newer").addEventListener("click", () => saved.newer());
    $("saved-title").tabIndex = -1;
    window.addEventListener("resize", onResize);
    onObjectiveChange();
    onRebalanceChange();
    if (!session.token) {
      showSignedOut();
      return;
    }
    try {
      const data = await api("auth/check", {});
      session.save(session.token, data.user.email);
      await showSignedIn();
    } catch (problem) {
      if (problem.status !== 401) {
        showSignedOut();
        notice(problem.message);
      }
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
