// Starts Swagger UI on /schema from a file of our own, so the page runs no inline script and
// keeps the same Content-Security-Policy as every other page (script-src 'self').
(() => {
  const container = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: container.dataset.specUrl,
    domNode: container,
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // No badge from validator.swagger.io: the page asks nothing of other hosts.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
  });
})();
