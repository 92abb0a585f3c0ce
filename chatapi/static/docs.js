// Starts Swagger UI on the /docs page (chatapi/templates/swagger_ui.html) with the settings the page holds as
// JSON: from a file of the server's own, since the page's Content-Security-Policy runs no inline script.
const config = JSON.parse(document.getElementById("swagger-ui-config").textContent);

window.ui = globalThis.SwaggerUIBundle(config);
