export { reportSteps, toTrialInput, trialId, upfrontTrials } from './upfront.js';
