// Places kept for pages that need broker features still being built.
// CLUSTER: when the cluster lands (NATS JetStream, see ../shared/CLUSTER.md),
// this page shows its nodes, their health and the cross-node traffic, from
// the admin API's cluster routes (to be added with it, with their OpenAPI
// entries). BRIDGES: the same for bridges to other brokers.

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
  'this broker runs as a single node. The cluster page (nodes, their health, cross-node traffic) comes with the cluster.');

export const bridgesPage = placeholder('Bridges',
  'bridges to other brokers are not built yet. This page will list them with their state and traffic.');
