/*
 * indico's page: sign up or log in, optimize a portfolio, watch its job over
 * /ws/jobs, see the result's charts, keep and reopen saved results.
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
      : [{field: body.field, message: problem.message}];
    let first = null;
    for (const item of items) {
      const name = typeof item.field === "string" ? item.field.split(".")[0] : "";
      let slot = name ? container.querySelector(`.error[data-field="${CSS.escape(name)}"]`) : null;
      if (!slot) slot = container.querySelector('.error[data-field=""]');
      slot.textContent = slot.textContent ? slot.textContent + " " + item.message : item.message;
      for (const input of container.querySelectorAll("[aria-describedby]")) {
        if (slot.id && input.getAttribute("aria-describedby").split(" ").includes(slot.id)) {
          input.setAttribute("aria-invalid", "true");
          first = first || input;
        }
      }
      const group = slot.closest("fieldset");
      if (group) {
        for (const input of group.querySelectorAll("input")) {
          input.setAttribute("aria-invalid", "true");
          first = first || input;
        }
      }
    }
    if (first && !first.disabled) first.focus();
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
                      "saved-section"]) {
      $(id).hidden = true;
    }
    $("result-section").dataset.id = "";
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

  // ---- the optimization request --------------------------------------------------

  function numberOrNull(id) {
    const text = $(id).value.trim();
    return text === "" ? null : Number(text);
  }

  function onObjectiveChange() {
    const objective = $("objective").value;
    $("target-return-field").hidden = objective !== "efficient_return";
    $("target-volatility-field").hidden = objective !== "efficient_risk";
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
    return body;
  }

  async function onOptimize(event) {
    event.preventDefault();
    const form = $("optimize-form");
    if ($("symbol-input").value.trim()) addTypedSymbols();
    clearErrors(form);
    const button = $("optimize");
    button.disabled = true;
    try {
      await events.ready();
      const data = await api("portfolio/optimize", optimizeRequest());
      jobs.follow(data.id, data.status);
    } catch (problem) {
      showError(form, problem);
    } finally {
      button.disabled = false;
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
    early: new Map(), // events that arrived before the 202 told their job's id
    poller: null,

    follow(id, status) {
      this.stop();
      this.current = id;
      $("progress-section").hidden = false;
      $("progress-log").replaceChildren();
      this.reset();
      this.mark(status, null);
      $("progress-message").textContent = "Optimizing…";
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

    reset() {
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
        message.textContent = "The optimization failed: " + describeJobError(problem);
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
          showResult(result);
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
    }, 200);
  }

  function showResult(result) {
    shown = result;
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

    const stats = result.stats || {};
    const statsBody = $("stats-table").tBodies[0];
    statsBody.replaceChildren(
      row(["Expected return (a year)", percent(stats.expected_return)], true),
      row(["Volatility (a year)", percent(stats.volatility)], true),
      row(["Sharpe ratio", number(stats.sharpe, 3)], true),
      row([`CVaR at ${params.cvar_level ?? 0.95} (a day)`, percent(stats.cvar)], true));

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
      const item = element("li");
      item.dataset.id = result.id;
      const what = element("div", null, "what");
      what.appendChild(element("strong", symbolsText));
      what.appendChild(document.createTextNode(
        ` · ${OBJECTIVE_NAMES[result.objective] || result.objective} · ${result.status}`));
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
          $("progress-section").hidden = false;
          $("progress-log").replaceChildren();
          jobs.reset();
          jobs.mark("failed", result.error);
          $("result-section").hidden = true;
        } else {
          showResult(result);
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
      if ($("result-section").dataset.id === id) {
        $("result-section").hidden = true;
        $("result-section").dataset.id = "";
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
