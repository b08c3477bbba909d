// The API docs page: Swagger UI on the app's own OpenAPI schema (a file, not inline: the CSP allows no inline script).
(function () {
  "use strict";
  window.addEventListener("load", function () {
    var root = document.getElementById("swagger-ui");
    window.ui = SwaggerUIBundle({
      url: root.dataset.openapi,
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null, // never call the public validator: the page works offline
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    });
  });
})();
