// Places kept for pages still to be built.
// CLUSTER: its nodes, their health and the cross-node traffic, from
// GET /api/v1/cluster (and whatever the cluster adds to the API, with its
// OpenAPI entries). BRIDGES: the same for bridges to other brokers, once
// they exist.

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

export const clusterPage = placeholder('Cluster',
  'the cluster page (nodes, their health, cross-node traffic) is still to be built. Until then the admin API answers GET /api/v1/cluster (see docs/cluster.md).');

export const bridgesPage = placeholder('Bridges',
  'bridges to other brokers are not built yet. This page will list them with their state and traffic.');
