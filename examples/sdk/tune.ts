/**
 * Define a study in TypeScript, submit it to an engine server, watch it, print the result.
 *
 *   npx stagetree serve                 # one terminal: the engine, on 127.0.0.1:7700
 *   npx tsx examples/sdk/tune.ts        # another: this script
 *
 * The trainer is the RegressionTrainer of ./trainer.ts, in this same project: the server's
 * workers import that file (the server runs on this machine and reads it from here).
 * `STAGETREE_SERVER` names another server; `STAGETREE_TOKEN` gives its token.
 */
import {
  choice,
  connect,
  defineStudy,
  EngineConflictError,
  grid,
  multistep,
  trainerFrom,
} from 'stagetree';

const study = defineStudy({
  name: 'sdk-quickstart',
  params: { dataSeed: 1, seed: 3 },
  space: {
    // Two initial learning rates, each dropped tenfold after 20 or 40 epochs: the two
    // trials of one initial rate share their first 20 epochs, trained once.
    lr: multistep({ init: choice([0.003, 0.03]), factor: 0.1, milestones: [choice([20, 40])] }),
    momentum: 0.9,
  },
  steps: 60,
  evalEvery: 10,
  tuner: grid(),
  metric: { name: 'loss', mode: 'min' },
  trainer: trainerFrom(new URL('./trainer.ts', import.meta.url), 'RegressionTrainer'),
  workers: 2,
});

const client = connect(); // $STAGETREE_SERVER, then 127.0.0.1:7700
let handle;
try {
  handle = await client.submit(study);
  console.log(`submitted ${handle.id}`);
} catch (e) {
  if (!(e instanceof EngineConflictError)) throw e;
  handle = client.study(study.name); // submitted before: follow it
  console.log(`${handle.id} is on the server already; following it`);
}

for await (const e of handle.events()) {
  if (e.kind === 'metric') console.log(`  ${e.trial} step ${e.step}: loss ${e.value.toFixed(4)}`);
  else if (e.kind === 'trial') console.log(`  ${e.trial} ${e.status} ${e.message}`.trimEnd());
  else console.log(`  ${e.study} is ${e.state}`);
}

const result = await handle.result();
const best = result.best;
console.log(
  `${result.id}: ${result.state}; best ${best ? `${best.trial} loss ${best.value.toFixed(4)} at step ${best.step}` : 'none'}; ` +
    `${result.stepsTrained} epochs trained for ${result.trials.total} trials of ${study.steps}`,
);
client.close();
if (result.state !== 'finished') process.exitCode = 1;
