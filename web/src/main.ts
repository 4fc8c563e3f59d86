// Entry point of the console bundle (web/dist/console.js).

import { App } from "./app";

new App().start();
