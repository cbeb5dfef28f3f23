// Places kept for pages still to be built. BRIDGES: bridges to other
// brokers, with their state and traffic, once they exist.

import { h } from './ui.js';

function placeholder(title, what) {
  return {
    title,
    render(page) {
      page.append(h('h1', {}, title),
        h('p', { class: 'msg', role: 'status', id: 'not-yet' }, `Not available yet: ${what}`));
      return null;
    },
  };
}

export const bridgesPage = placeholder('Bridges',
  'bridges to other brokers are not built yet. This page will list them with their state and traffic.');
