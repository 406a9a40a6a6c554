() => {
  // A click on a cell of the sweep heatmap opens that cell's details: "length:depth:time" goes into a
  // hidden box whose change the Sweep tab listens to. Plots are redrawn as cells arrive, so new
  // plot elements are looked for every second.
  const hook = () => {
    document.querySelectorAll("#sweep-heatmap .js-plotly-plot").forEach((plot) => {
      if (plot.labHooked || typeof plot.on !== "function") return;
      plot.labHooked = true;
      plot.on("plotly_click", (event) => {
        const point = event.points && event.points[0];
        const box = document.querySelector("#sweep-picked textarea, #sweep-picked input");
        if (!point || !box) return;
        box.value = `${point.y}:${point.x}:${Date.now()}`; // the time makes a second click a change
        box.dispatchEvent(new Event("input", { bubbles: true }));
      });
    });
  };
  setInterval(hook, 1000);
}
